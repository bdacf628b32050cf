"""Nothing the user did not ask to replace is destroyed (issue 16, item 1): an output that is a
file the run reads is refused even with --overwrite, whatever path spells it; --overwrite replaces
files and tiler's own Zarr outputs, never another folder; the workdir may not be OUTPUT; a
workflow never writes over its inputs nor takes its own outputs as inputs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_raster, run_tiler, shown_lines


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(result, code: int, *words: str):
    lines = shown_lines(result.stderr)
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.stderr


@pytest.mark.parametrize("spelling", ["same", "dot", "absolute", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["upscale", "export"])
def test_an_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, spelling, command):
    src = make_raster(tmp_path / "in.tif", width=16, height=12)
    before = digest(src)
    output = {"same": "in.tif", "dot": "./in.tif", "absolute": str(src)}.get(spelling)
    if spelling == "symlink":
        os.symlink(src, tmp_path / "link.tif")
        output = "link.tif"
    elif spelling == "hardlink":
        os.link(src, tmp_path / "hard.tif")
        output = "hard.tif"
    result = run_tiler(command, "in.tif", output, "--overwrite", cwd=tmp_path)
    refused(result, 1, "is the input of this run", "never writes over a file it reads")
    assert digest(src) == before
    assert not list(tmp_path.glob("*.tiler")) and not list(tmp_path.glob("*.partial"))


def test_an_output_that_is_the_mask_is_refused(tmp_path):
    from tiny_models import save_tiny_inpaint_model

    model = save_tiny_inpaint_model(tmp_path / "model")
    src = make_raster(tmp_path / "in.tif", width=32, height=32, dtype="uint8")
    mask = make_raster(tmp_path / "mask.tif", width=32, height=32, count=1, dtype="uint8")
    before = digest(mask)
    result = run_tiler(
        "inpaint", src, mask, "--model", model, "--mask", mask, "--overwrite", "--device", "cpu"
    )
    refused(result, 1, "is the mask of this run")
    assert digest(mask) == before


def test_heat_map_over_the_measured_raster_and_non_png_names_are_refused(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=16, height=12)
    out = tmp_path / "out.tif"
    assert run_tiler("upscale", src, out).returncode == 0
    before = digest(out)
    over_itself = run_tiler("qa", out, "--heatmap", out, "--overwrite")
    refused(over_itself, 1, "is the raster being measured")
    jpeg = run_tiler("qa", out, "--heatmap", tmp_path / "h.jpg")
    refused(jpeg, 2, "--heatmap", "expected a .png")
    assert digest(out) == before and not (tmp_path / "h.jpg").exists()


@pytest.mark.parametrize("name", ["out.tif", "mydata.zarr"])
def test_overwrite_never_deletes_a_folder_tiler_did_not_write(tmp_path, name):
    src = make_raster(tmp_path / "in.tif", width=16, height=12)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "keep.txt").write_text("the user's own notes\n")
    result = run_tiler("upscale", src, folder, "--overwrite", "--format", "Zarr")
    refused(result, 1, "is a folder tiler did not write", "never another folder")
    assert (folder / "keep.txt").read_text() == "the user's own notes\n"


def test_overwrite_replaces_tilers_own_zarr_output(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=16, height=12)
    out = tmp_path / "out.zarr"
    assert run_tiler("upscale", src, out, "--model", "nearest").returncode == 0
    result = run_tiler("upscale", src, out, "--model", "bicubic", "--overwrite")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_a_workdir_that_is_or_lies_in_the_output_is_refused(tmp_path, where):
    src = make_raster(tmp_path / "in.tif", width=16, height=12)
    out = tmp_path / "out.tif"
    workdir = out if where == "equal" else out / "work"
    result = run_tiler("upscale", src, out, "--workdir", workdir)
    refused(result, 2, "--workdir", "choose a workdir")
    assert not out.exists()


def write_workflow(folder: Path, output: str) -> Path:
    path = folder / "flow.yaml"
    path.write_text(
        f"""inputs: ["scans/*.tif"]
steps:
  - name: up
    task: upscale
    model: nearest
    scale: 2
    output: "{output}"
"""
    )
    return path


def test_a_workflow_output_template_that_names_an_input_is_refused(tmp_path):
    (tmp_path / "scans").mkdir()
    src = make_raster(tmp_path / "scans" / "a.tif", width=16, height=12)
    before = digest(src)
    result = run_tiler("run", write_workflow(tmp_path, "scans/{name}"), "--overwrite")
    assert result.returncode == 2, result.stderr
    assert "an input file of this workflow" in result.stderr
    assert digest(src) == before


def test_a_rerun_never_takes_the_workflows_own_outputs_as_inputs(tmp_path):
    """The cron case: outputs land inside the inputs glob; the second run skips them, says so
    once, and does not make a_x2_x2.tif."""
    (tmp_path / "scans").mkdir()
    make_raster(tmp_path / "scans" / "a.tif", width=16, height=12)
    flow = write_workflow(tmp_path, "scans/{stem}_x2.tif")
    assert run_tiler("run", flow).returncode == 0
    assert (tmp_path / "scans" / "a_x2.tif").is_file()
    again = run_tiler("run", flow)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipping 1 input file(s) this workflow wrote itself") == 1
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == ["a.tif", "a_x2.tif"]
    shutil.rmtree(tmp_path / "scans")
