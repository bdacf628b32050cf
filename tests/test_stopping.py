"""One run per output and workdir, and a run that stops when asked (issue 16, items 4 and 5): a
second run on a busy output is refused at once (even with --overwrite) naming the holder; a killed
run leaves no stale lock; Ctrl-C and SIGTERM stop within seconds with exit 130 / 143 and one line,
and the rerun resumes to the uninterrupted output."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import done_count, make_raster, read_raster, run_tiler, shown_lines

# many small regions of a tiny LDM: a run of several seconds whose units finish one by one
SLOW = ("--device", "cpu", "--workers", "1", "--tile", "16", "--overlap", "4", "--region", "16",
        "--halo", "4", "--steps", "20", "--decode-tile", "16", "--decode-halo", "4")  # fmt: skip
WIDTH, HEIGHT, REGIONS = 128, 64, 32  # regions of 16 latent px: about 10 s on a 2-core CPU


def start(args, log: Path) -> subprocess.Popen:
    with open(log, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tiler", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def wait_for(condition, process, log: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"tiler ended (exit {process.returncode}) too soon:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the run")
        time.sleep(0.01)


def test_a_second_run_on_a_busy_output_is_refused_and_a_killed_run_leaves_no_lock(
    tmp_path, tiny_model
):
    src = make_raster(tmp_path / "in.tif", width=WIDTH, height=HEIGHT, dtype="uint8")
    out = tmp_path / "out.tif"
    args = ("upscale", src, out, "--model", tiny_model, *SLOW)
    first = start(args, tmp_path / "first.log")
    try:
        wait_for(
            lambda: done_count(Path(f"{out}.tiler"), "denoise") >= 1, first, tmp_path / "first.log"
        )
        for extra in ((), ("--overwrite",)):
            second = run_tiler(*args, *extra)
            lines = shown_lines(second.stderr)
            assert second.returncode == 1 and len(lines) == 1, second.stderr
            assert "another tiler run is writing this output" in lines[0]
            assert f"PID {first.pid}, running for" in lines[0]
        assert first.poll() is None  # the first run was left alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = run_tiler(*args)  # the kernel released the dead run's lock
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stderr
    assert not Path(f"{out}.lock").exists() and not Path(f"{out}.tiler.lock").exists()


STOPS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """The input and the output of a run nobody stopped."""
    folder = tmp_path_factory.mktemp("stopping")
    src = make_raster(folder / "in.tif", width=WIDTH, height=HEIGHT, dtype="uint8")
    reference = folder / "reference.tif"
    assert run_tiler("upscale", src, reference, "--model", tiny_model, *SLOW).returncode == 0
    return src, reference


@pytest.mark.parametrize(("sent", "code", "word"), STOPS)
def test_ctrl_c_and_sigterm_stop_within_seconds_and_the_rerun_resumes(
    tmp_path, tiny_model, uninterrupted, sent, code, word
):
    src, reference = uninterrupted
    out = tmp_path / "out.tif"
    workdir = Path(f"{out}.tiler")
    log = tmp_path / "stopped.log"
    process = start(("upscale", src, out, "--model", tiny_model, *SLOW), log)
    wait_for(lambda: done_count(workdir, "denoise") >= 2, process, log)
    process.send_signal(sent)
    sent_at = time.monotonic()
    try:
        process.wait(timeout=20)
    finally:
        process.kill()
    took = time.monotonic() - sent_at
    lines = shown_lines(log.read_text())
    # 0.04 s on an idle 2-core machine; the bound leaves room for a loaded CI machine
    assert process.returncode == code and took < 20, f"exit {process.returncode} after {took:.1f} s"
    assert lines == [f"tiler: {word}; run the same command again to resume"], log.read_text()
    assert done_count(workdir, "denoise") < REGIONS and not out.exists()
    resumed = run_tiler("upscale", src, out, "--model", tiny_model, *SLOW)
    assert resumed.returncode == 0 and "(resumed)" in resumed.stderr, resumed.stderr
    np.testing.assert_array_equal(read_raster(out)[0], read_raster(reference)[0])
