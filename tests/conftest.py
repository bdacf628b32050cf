"""Shared test helpers: small real rasters on disk."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

# Two cores: one torch thread per process, or test processes compete (measured 15x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing in the tests may reach the Hugging Face hub: models come from temp dirs or a fake cache.
os.environ["HF_HUB_OFFLINE"] = "1"

NORTH_UP = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)
ROTATED = Affine(8.0, 3.0, 500000.0, 2.0, -7.5, 4600000.0)


def raster_content(width: int, height: int, count: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Imagery-like content spanning most of the dtype's range: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = []
    for band in range(count):
        smooth = (
            np.sin(xx / (7 + band) + band) + np.cos(yy / (5 + 2 * band)) + np.sin((xx + yy) / 13)
        )
        bands.append(smooth / 3 + 0.3 * rng.standard_normal((height, width)))
    unit = (np.clip(np.stack(bands), -1.5, 1.5) + 1.5) / 3.0  # 0..1
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        low, high = max(info.min, -30000), min(info.max, 60000)
        return np.round(low + unit * (high - low)).astype(dtype)
    return (unit * 1000.0 - 200.0).astype(dtype)


def make_raster(
    path,
    width=40,
    height=30,
    count=3,
    dtype="uint8",
    nodata=None,
    crs="EPSG:32633",
    transform=NORTH_UP,
    data=None,
    seed=0,
    **profile,
):
    """Write a small GeoTIFF (crs=None and transform=None: no georeferencing) and return its
    path."""
    if data is None:
        data = raster_content(width, height, count, dtype, seed)
    count, height, width = data.shape
    options = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, nodata=nodata
    )
    if crs is not None:
        options["crs"] = crs
    if transform is not None:
        options["transform"] = transform
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
    return path


def read_raster(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny LDM-SR model folder (the real classes and channel layout, random weights)."""
    from tiny_models import save_tiny_sr_model

    return save_tiny_sr_model(tmp_path_factory.mktemp("models") / "tiny-sr")


@pytest.fixture
def raster(tmp_path):
    """Factory: raster(name, **make_raster options) -> path in tmp_path."""

    def factory(name="input.tif", **kwargs):
        return make_raster(tmp_path / name, **kwargs)

    return factory


# --- the real CLI in a subprocess -----------------------------------------------------------------
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS_BAR = re.compile(
    r"^\w+:\s+\d+%\|"
)  # tqdm redraws these in place and clears them at the end


def run_tiler(*args, preexec_fn=None, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``python -m tiler ARGS`` in a fresh process (in ``cwd``, with ``env`` added to the
    environment): real exit codes, real stderr. Commands that name no model run the classical
    bicubic (the default LDM model is not on this machine)."""
    args = [*map(str, args)]
    if args and args[0] in ("upscale", "plan") and "--model" not in args:
        args += ["--model", "bicubic"]
    command = [sys.executable, "-m", "tiler", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec_fn,
        cwd=cwd,
        env=os.environ | env if env else None,
    )


def shown_lines(stderr: str) -> list[str]:
    """The lines stderr leaves on a terminal: without progress bars (redrawn with \\r and cursor
    moves, cleared when done) and blank lines."""
    text = ANSI_ESCAPE.sub("", stderr)
    pieces = (piece.strip() for line in text.split("\n") for piece in line.split("\r"))
    return [piece for piece in pieces if piece and not PROGRESS_BAR.match(piece)]


def done_count(workdir: Path, stage: str) -> int:
    """Units marked done: chunk files of the completion array (Zarr does not store chunks that hold
    only the fill value 0; it writes each chunk to a temporary name, then renames it)."""
    chunks = workdir / "done" / stage / "c"
    if not chunks.is_dir():
        return 0
    return sum(1 for path in chunks.rglob("*") if path.is_file() and ".partial" not in path.name)


def kill_part_way(
    args, workdir: Path, log: Path, timeout: float = 120.0, stage: str = "process", after: int = 3
):
    """Start tiler, SIGKILL it once ``after`` units of ``stage`` are done; fail if it ends first."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tiler", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + timeout
    try:
        while done_count(workdir, stage) < after:
            if process.poll() is not None:
                pytest.fail(
                    f"tiler ended (exit {process.returncode}) before {after} {stage} units "
                    f"were done; stderr:\n{log.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {after} {stage} units done after {timeout} s")
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    if process.returncode != -signal.SIGKILL:
        pytest.fail(
            f"tiler finished (exit {process.returncode}) before the kill; make the input "
            "larger so that processing takes longer"
        )


def assert_resumes_after_kill(command: str, src, args, tmp_path: Path, regions: int):
    """``tiler COMMAND SRC OUT ARGS`` SIGKILLed after 2 denoised regions resumes (computing only the
    rest) to the output of an uninterrupted run."""
    reference = run_tiler(command, src, tmp_path / "reference.tif", *args)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "out.tif"
    workdir = Path(f"{out}.tiler")
    kill_part_way(
        (command, src, out, "-q", *args), workdir, tmp_path / "killed.log", stage="denoise", after=2
    )
    assert not out.exists()
    finished = done_count(workdir, "denoise")
    resumed = run_tiler(command, src, out, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stderr
    assert f"denoise {regions - finished}/{regions}" in resumed.stderr
    np.testing.assert_array_equal(read_raster(out)[0], read_raster(tmp_path / "reference.tif")[0])
