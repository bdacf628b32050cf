"""A run killed with SIGKILL part-way and run again gives the same output as a run never killed, and
the second run computes only the regions the first did not finish."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import (
    done_count,
    kill_part_way,
    make_raster,
    read_raster,
    run_tiler,
    shown_lines,
)

# Regions of 32 px on one worker: enough units (tens of ms each) to kill the run part-way.
RUN = ("--model", "bicubic", "--tile", "32", "--region", "32", "--workers", "1")
SUMMARY = re.compile(r"computed process (\d+)/(\d+)(?:, assemble (\d+)/(\d+))?")
KILL_AFTER = 3  # regions done before the kill (kill_part_way's default)


def summary_counts(result) -> tuple[int, ...]:
    """(process computed, total[, assemble computed, total]) from the final summary line."""
    assert result.returncode == 0, result.stderr
    last = shown_lines(result.stderr)[-1]
    found = SUMMARY.search(last)
    assert last.startswith("tiler: wrote ") and found, f"no summary line in:\n{result.stderr}"
    return tuple(int(group) for group in found.groups() if group is not None)


def done_array(workdir: Path, stage: str) -> np.ndarray:
    return zarr.open_array(str(workdir / "done" / stage), mode="r")[:]


def chunk_identities(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every chunk file: Zarr writes a new file and renames it over the old one,
    so a rewritten chunk gets a new inode."""
    return {
        str(path.relative_to(folder)): (path.stat().st_ino, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and ".partial" not in path.name
    }


@pytest.mark.parametrize(
    "size, extra, data_array",
    [
        (320, (), "output"),  # halo 0: regions write straight into `output`
        (256, ("--halo", "8"), "regions"),  # halo: regions, then an assemble stage
    ],
    ids=["no-halo", "halo"],
)
def test_killed_run_resumes_to_the_same_output(tmp_path, size, extra, data_array):
    src = make_raster(tmp_path / "in.tif", width=size, height=size, count=3, dtype="uint8")
    args = (*RUN, *extra)

    reference = tmp_path / "reference.tif"
    uninterrupted = run_tiler("upscale", src, reference, *args)
    first = summary_counts(uninterrupted)
    total = first[1]
    assert first[0] == total and "(resumed)" not in uninterrupted.stderr

    out = tmp_path / "out.tif"
    workdir = Path(f"{out}.tiler")
    kill_part_way(("upscale", src, out, "-q", *args), workdir, tmp_path / "killed.log")
    assert not out.exists(), "a killed run left a file under the final name"

    done = done_array(workdir, "process")
    assert done.size == total and set(np.unique(done)) <= {0, 1}
    finished = int(done.sum())
    assert finished == done_count(workdir, "process")
    assert KILL_AFTER <= finished < total, (
        f"{finished}/{total} regions done at the kill: make the input larger"
    )
    if extra:
        assert done_count(workdir, "assemble") == 0  # killed while processing
    kept = chunk_identities(workdir / data_array / "c")
    assert kept, "no region data on disk although regions were marked done"

    result = run_tiler("upscale", src, out, *args, "--keep-workdir")
    counts = summary_counts(result)
    assert "(resumed)" in result.stderr
    assert counts[:2] == (total - finished, total)
    assert counts[0] < total
    if extra:
        assert counts[2:] == (total, total)

    # the regions done before the kill were not written again
    now = chunk_identities(workdir / data_array / "c")
    for iy, ix in np.argwhere(done == 1):
        name = _chunk_name(data_array, int(iy), int(ix))
        assert now[name] == kept[name], f"region ({iy}, {ix}) was recomputed"

    pixels, profile = read_raster(out)
    expected, expected_profile = read_raster(reference)
    assert profile == expected_profile
    assert np.array_equal(pixels, expected)
    assert not Path(f"{out}.partial").exists()


def _chunk_name(array: str, iy: int, ix: int) -> str:
    """The chunk file (relative to ``<array>/c``) written by region (iy, ix)."""
    if array == "output":  # (bands, y, x) with one chunk per region
        return str(Path("0", str(iy), str(ix)))
    return str(Path(str(iy), str(ix), "0", "0", "0"))  # regions: (ny, nx, bands, side, side)


def test_pending_units_are_the_flags_not_set(tmp_path):
    """The done flags listed from the workdir's chunk files are the flags Zarr reads, with a write
    a crash interrupted (a stale temporary file) left behind."""
    import numpy as np

    from tiler.tasks import plan_upscale
    from tiler.workdir import arrays as engine
    from tiler.workdir.store import Workdir

    src = make_raster(tmp_path / "in.tif", width=60, height=50)
    plan = plan_upscale(src, tmp_path / "out.tif", model="nearest", scale=2, tile=8, region=16)
    shape = plan.tile_grid().region_shape
    workdir, _ = Workdir.open_or_create(
        tmp_path / "work", plan, engine.done_specs({"process": shape})
    )
    assert workdir.pending("process") == [tuple(i) for i in np.ndindex(shape)]
    for index in [(0, 1), (2, 3), (3, 0)]:
        workdir.mark_done("process", index)
    (tmp_path / "work" / "done" / "process" / "c" / "1").mkdir()
    (tmp_path / "work" / "done" / "process" / "c" / "1" / "2.1f3a.partial").write_bytes(b"\0")
    flags = workdir.array("done/process")[:]
    assert workdir.pending("process") == [tuple(map(int, i)) for i in np.argwhere(flags == 0)]
    assert len(workdir.pending("process")) == shape[0] * shape[1] - 3
