"""The local executor: runs a stage's units on a pool of threads with a progress bar.

The heavy work (GDAL reads, torch kernels, Zarr compression) releases the GIL, so threads use all
cores without pickling models or plans. A failing unit stops the stage: units not yet started are
cancelled and the error is raised with the unit it came from.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from .errors import TilerError


@dataclass
class StageReport:
    name: str
    total: int
    computed: int = 0
    seconds: float = 0.0

    @property
    def reused(self) -> int:
        return self.total - self.computed


def run_stage(name: str, total: int, pending: Sequence[Hashable], work: Callable[[Hashable], None],
              workers: int, progress: bool) -> StageReport:
    """Run ``work(unit)`` for every pending unit; ``total`` counts done units too (for the bar)."""
    from tqdm import tqdm

    report = StageReport(name, total)
    started = time.perf_counter()
    with tqdm(total=total, initial=total - len(pending), desc=name, unit="unit",
              disable=not progress, leave=False, dynamic_ncols=True) as bar:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"tiler-{name}") as pool:
            futures = {pool.submit(work, unit): unit for unit in pending}
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        for other in remaining:
                            other.cancel()
                        _raise_for(name, futures[future], future.exception())
                    report.computed += 1
                    bar.update(1)
    report.seconds = time.perf_counter() - started
    return report


def _raise_for(stage: str, unit, exc: BaseException):
    if isinstance(exc, (TilerError, OSError)):
        raise exc
    raise RuntimeError(f"{stage} of unit {unit} failed: {exc!r}") from exc
