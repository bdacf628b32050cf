"""Executors run a stage's units and report them as they finish; export waits on those reports.

- ``ThreadExecutor``: this process, a pool of threads calling the task object. The heavy work (GDAL
  reads, torch kernels, Zarr compression) releases the GIL, so threads use all cores without
  pickling models or plans.
- ``tiler.execution.dask_executor.DaskExecutor``: the same units as Dask tasks on a cluster.

Both feed ``track_stage``: one progress bar per stage, ``on_done`` per finished unit, and on the
first failure the units not yet started are cancelled and the error is raised naming its unit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

from tiler.errors import UnitFailed


@dataclass
class StageReport:
    name: str
    total: int
    computed: int = 0
    seconds: float = 0.0


Finished = tuple[Hashable, BaseException | None]  # (unit, its error or None)


def track_stage(
    name: str,
    total: int,
    pending: int,
    finished: Iterable[Finished],
    cancel: Callable[[], None],
    progress: bool,
    on_done: Callable[[Hashable], None] | None,
    unit_name: str = "unit",
) -> StageReport:
    """Consume ``finished`` (one item per pending unit, in completion order); ``total`` counts the
    units done before too (for the bar)."""
    from tqdm import tqdm

    report = StageReport(name, total)
    started = time.perf_counter()
    with tqdm(
        total=total,
        initial=total - pending,
        desc=name,
        unit=unit_name,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for unit, error in finished:
            if error is not None:
                cancel()
                raise unit_error(name, unit_name, unit, error)
            report.computed += 1
            bar.update(1)
            if on_done is not None:
                on_done(unit)
    report.seconds = time.perf_counter() - started
    return report


def unit_error(stage: str, unit_name: str, unit, error: BaseException) -> BaseException:
    """The error to raise for a failed unit: names the unit and the cause (interrupts pass)."""
    if not isinstance(error, Exception):
        return error
    wrapped = UnitFailed(stage, unit_name, unit, error)
    wrapped.__cause__ = error
    return wrapped


def keep_freed_memory():
    """Keep freed buffers for reuse: glibc maps buffers over its mmap threshold (32 MiB at most;
    fixed at 128 KiB when MALLOC_TRIM_THRESHOLD_ is set, as Dask's nanny does) and unmaps them on
    free, so each new tensor or array is faulted in again, page by page (measured on the tiny
    model: Dask workers 1.7x slower, 15x the system time). Keep buffers up to 64 MiB on the heap
    and trim it only past 64 MiB free. Per process; a no-op off glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


class ThreadExecutor:
    """Runs ``getattr(task, stage)(unit)`` on ``workers`` threads (``stage_workers[stage]`` where
    given), one BLAS thread each."""

    def __init__(self, task, workers: int, stage_workers: dict[str, int] | None = None):
        keep_freed_memory()
        self.task = task
        self.workers = max(1, workers)
        self.stage_workers = {
            stage: max(1, count) for stage, count in (stage_workers or {}).items()
        }
        self.stages = task.stages
        self.unit_shapes = task.unit_shapes

    def run_stage(
        self,
        name: str,
        total: int,
        pending: Sequence[Hashable],
        progress: bool,
        on_done: Callable[[Hashable], None] | None = None,
    ) -> StageReport:
        work = getattr(self.task, name)
        pool = ThreadPoolExecutor(
            max_workers=self.stage_workers.get(name, self.workers),
            thread_name_prefix=f"tiler-{name}",
        )
        try:
            with threadpool_limits(limits=1):
                futures = {pool.submit(work, unit): unit for unit in pending}
                finished = ((futures[f], f.exception()) for f in as_completed(futures))
                report = track_stage(
                    name,
                    total,
                    len(pending),
                    finished,
                    lambda: [f.cancel() for f in futures],
                    progress,
                    on_done,
                    self.task.unit_names[name],
                )
        except Exception:  # a unit failed: queued units never start, running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:
            # Ctrl-C or SIGTERM: queued units never start; those running are not waited for
            # (their chunks stay unmarked, so a rerun computes them)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return report


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
    """The producer stopped; the consumer should stop too (the producer's error is the one to
    report)."""


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
