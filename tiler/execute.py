"""The local executor: runs a stage's units on a pool of threads with a progress bar.

The heavy work (GDAL reads, torch kernels, Zarr compression) releases the GIL, so threads use all
cores without pickling models or plans. A failing unit stops the stage: units not yet started are
cancelled and the error is raised with the unit it came from.
"""

from __future__ import annotations

import threading
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


def run_stage(name: str, total: int, pending: Sequence[Hashable], work: Callable[[Hashable], None],
              workers: int, progress: bool, on_done: Callable[[Hashable], None] | None = None
              ) -> StageReport:
    """Run ``work(unit)`` for every pending unit, in order of submission; ``total`` counts done
    units too (for the bar); ``on_done(unit)`` is called as each unit finishes."""
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
                    if on_done is not None:
                        on_done(futures[future])
    report.seconds = time.perf_counter() - started
    return report


def _raise_for(stage: str, unit, exc: BaseException):
    if isinstance(exc, (TilerError, OSError)):
        raise exc
    raise RuntimeError(f"{stage} of unit {unit} failed: {exc!r}") from exc


class Gate:
    """Lets a consumer wait for units a producer finishes (export waits on computed chunks)."""

    def __init__(self, ready=()):
        self._ready = set(ready)
        self._error: BaseException | None = None
        self._condition = threading.Condition()

    def open(self, unit: Hashable):
        with self._condition:
            self._ready.add(unit)
            self._condition.notify_all()

    def fail(self, error: BaseException):
        with self._condition:
            self._error = error
            self._condition.notify_all()

    def wait(self, unit: Hashable):
        with self._condition:
            self._condition.wait_for(lambda: unit in self._ready or self._error is not None)
            if unit not in self._ready:
                raise GateClosed(f"unit {unit} will not be computed: {self._error}")


class GateClosed(Exception):
    """The producer stopped; the consumer should stop too (the producer's error is the one to report)."""


class Background:
    """Runs ``function`` on a thread; ``result()`` joins it and re-raises what it raised."""

    def __init__(self, function: Callable[[], object], name: str):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function,), name=name, daemon=True)
        self._thread.start()

    def _run(self, function):
        try:
            function()
        except BaseException as exc:  # handed to the joining thread
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
