"""The Python API (tiler/api.py), as a notebook uses it: ``import tiler`` and call the commands,
with the CLI's option names; results, plans, reports and DataArrays back; TilerErrors with the
CLI's messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import make_raster, read_raster, run_tiler
from tiny_models import save_tiny_inpaint_model

import tiler
from tiler.errors import BadParameter, InputError, TilerError


def test_import_tiler_stays_light_and_offers_the_api():
    code = (
        "import sys, tiler; assert callable(tiler.upscale) and tiler.TilerError; "
        "print(sorted(m for m in ('torch', 'diffusers', 'rasterio') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_subpackage_hides_an_api_function():
    """Importing tiler.X sets the attribute tiler.X to the subpackage: an API name may not be one
    (``tiler.qa`` would become the module once the seam report was imported)."""
    from pathlib import Path

    import tiler.quality.seams  # noqa: F401

    package = Path(tiler.__file__).parent
    assert not [name for name in tiler.API if (package / name).exists()]
    assert all(callable(getattr(tiler, name)) for name in tiler.API)


def test_upscale_returns_the_result_and_equals_the_cli(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=40, height=30)
    result = tiler.upscale(src, tmp_path / "api.tif", model="bicubic", tile=16, progress=False)
    assert isinstance(result, tiler.Result)
    assert result.output == tmp_path / "api.tif" and result.seconds > 0 and not result.resumed
    assert result.plan.output.width == 160 and result.stages["process"][1] >= 1
    cli = run_tiler("upscale", src, tmp_path / "cli.tif", "--model", "bicubic", "--tile", 16)
    assert cli.returncode == 0, cli.stderr
    np.testing.assert_array_equal(
        read_raster(tmp_path / "api.tif")[0], read_raster(tmp_path / "cli.tif")[0]
    )


def test_plan_export_and_qa(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=40, height=30)
    planned = tiler.plan(src, model="bicubic", scale=2)
    assert planned.summary()["output_size"] == [80, 60]
    assert planned.output.path == str(tmp_path / "in_x2.tif")
    assert not (tmp_path / "in_x2.tif").exists()
    copied = tiler.export(src, tmp_path / "copy.zarr", bidx=[2, 1], progress=False)
    assert copied.plan.bands == (2, 1)
    cog = tiler.export(src, tmp_path / "c.tif", format="COG", co=["COMPRESS=ZSTD"], progress=False)
    assert cog.plan.output.creation_options["COMPRESS"] == "ZSTD"
    up = tiler.upscale(src, tmp_path / "up.tif", model="bicubic", region=16, progress=False)
    report = tiler.qa(up.output)
    assert set(report.index) >= {"tile", "region", "all"}


def test_errors_are_tiler_errors_with_the_cli_messages(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=40, height=30)
    with pytest.raises(BadParameter, match="overlap: 16 is out of range"):
        tiler.upscale(src, model="bicubic", tile=16, overlap=16)
    with pytest.raises(BadParameter, match="decode_hallo: not an option of this task"):
        tiler.upscale(src, decode_hallo=4)
    with pytest.raises(InputError, match="no such file"):
        tiler.upscale(tmp_path / "missing.tif", model="bicubic")
    with pytest.raises(TilerError, match="expected exactly one of mask, mask_nodata"):
        tiler.inpaint(src, model="any")
    assert not any(path.name.endswith((".partial", ".tiler")) for path in tmp_path.iterdir())


def test_inpaint_with_a_seam_report(tmp_path):
    model = save_tiny_inpaint_model(tmp_path / "model")
    src = make_raster(tmp_path / "in.tif", width=48, height=40)
    area = np.zeros((1, 40, 48), dtype="uint8")
    area[0, 10:30, 12:30] = 1
    mask = make_raster(tmp_path / "mask.tif", data=area)
    result = tiler.inpaint(
        src, model=str(model), mask=mask, steps=2, tile=8, overlap=2, region=8, halo=2,
        decode_tile=8, decode_halo=2, device="cpu", qa=True, progress=False,
    )  # fmt: skip
    assert result.output == tmp_path / "in_filled.tif"
    assert result.seam_index is not None and "tile" in result.seam_index
    data, out = read_raster(src)[0], read_raster(result.output)[0]
    np.testing.assert_array_equal(out[:, area[0] == 0], data[:, area[0] == 0])


def test_run_workflow(tmp_path):
    make_raster(tmp_path / "a.tif", width=20, height=20)
    workflow = {
        "inputs": [str(tmp_path / "*.tif")],
        "steps": [
            {"name": "x2", "task": "upscale", "model": "bicubic", "scale": 2,
             "output": str(tmp_path / "out" / "{stem}_x2.tif")},
        ],
    }  # fmt: skip
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    outcomes = tiler.run_workflow(path, progress=False)
    assert [outcome.status for outcome in outcomes] == ["done"]
    assert (tmp_path / "out" / "a_x2.tif").is_file()


def test_a_dataarray_round_trip(tmp_path):
    import rioxarray

    src = make_raster(tmp_path / "in.tif", width=40, height=30, dtype="uint16", nodata=0)
    array = rioxarray.open_rasterio(src).load()
    upscaled = tiler.upscale(array, model="bicubic", progress=False)
    file_run = tiler.upscale(src, tmp_path / "file.tif", model="bicubic", progress=False)
    expected = rioxarray.open_rasterio(file_run.output)
    assert upscaled.shape == (array.sizes["band"], 120, 160)
    assert upscaled.rio.crs == array.rio.crs
    assert upscaled.rio.transform() == expected.rio.transform()
    assert upscaled.rio.nodata == 0
    np.testing.assert_array_equal(upscaled.values, expected.values)
    with pytest.raises(BadParameter, match="a DataArray input returns a DataArray"):
        tiler.upscale(array, tmp_path / "x.tif", model="bicubic")
