"""torch threads per model worker (issue 16, item 8): --threads, else the user's OMP_NUM_THREADS,
else the cores divided by the workers; and a real run honours --threads."""

from __future__ import annotations

from conftest import make_raster, run_tiler

from tiler.execution.run import torch_threads


def test_threads_come_from_the_option_then_the_environment_then_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(16, 2) == 8 and torch_threads(2, 4) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(16, 2) == 3  # the user's setting wins over the split
    assert torch_threads(16, 2, threads=5) == 5  # and --threads over both
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert torch_threads(16, 2) == 8


def test_a_run_with_threads_gives_the_same_output(tmp_path, tiny_model):
    src = make_raster(tmp_path / "in.tif", width=24, height=16, dtype="uint8")
    grid = ("--tile", "16", "--overlap", "4", "--steps", "2", "--device", "cpu")
    for threads in ("1", "2"):
        result = run_tiler("upscale", src, tmp_path / f"t{threads}.tif", "--model", tiny_model,
                           "--threads", threads, *grid)  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "t1.tif").read_bytes() != b""
    from conftest import read_raster

    assert (read_raster(tmp_path / "t1.tif")[0] == read_raster(tmp_path / "t2.tif")[0]).all()
