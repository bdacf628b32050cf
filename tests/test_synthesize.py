"""``tiler synthesize`` with a tiny model in tiler's model-directory format: an RGB image
georeferenced like the labels, the CompVis conditioning computed exactly and tile by tile, the class
mapping and its errors, and results independent of batch size, worker count and restarts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NORTH_UP,
    assert_resumes_after_kill,
    make_raster,
    read_raster,
    run_tiler,
    shown_lines,
)
from test_errors import assert_no_output, assert_one_error
from test_inpaint import CLI, FAST, GRID  # the same small grid and sampling
from tiny_models import save_tiny_synthesis_model

from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import run_plan
from tiler.ldm.options import RuntimeOptions
from tiler.tasks.synthesis import plan_synthesize

CLASSES = 6


@pytest.fixture(scope="module")
def synthesis_model(tmp_path_factory) -> Path:
    return save_tiny_synthesis_model(
        tmp_path_factory.mktemp("models") / "tiny-synthesis", classes=CLASSES
    )


def land_cover(path, height=38, width=45, values=(11, 21, 41, 90), nodata=None, dtype="uint8"):
    """Blocks of land-cover codes (not multiples of 4 in size, blocks not aligned to latent px)."""
    y, x = np.mgrid[0:height, 0:width]
    labels = np.array(values, dtype=dtype)[((y // 7) + (x // 9)) % len(values)]
    return make_raster(path, data=labels[None], nodata=nodata), labels


def write_classes(path, mapping: dict) -> Path:
    path.write_text(
        "".join(f"{key}: {'null' if value is None else value}\n" for key, value in mapping.items())
    )
    return path


NLCD = {11: 0, 21: 3, 41: 5, 90: 2}


def synthesize(labels, out, model, classes=None, batch_size=None, workers=1, **grid):
    plan = plan_synthesize(
        labels, out, model=str(model), classes_file=classes, diffusion=FAST, **(GRID | grid)
    )
    run_plan(
        plan,
        runtime=RuntimeOptions(device="cpu", batch_size=batch_size),
        execution=ExecutionOptions(cluster="threads", workers=workers),
    )
    return read_raster(out), plan


def test_rgb_image_georeferenced_like_the_labels(tmp_path, synthesis_model):
    labels, _ = land_cover(tmp_path / "labels.tif")
    classes = write_classes(tmp_path / "classes.yaml", NLCD)
    (out, profile), plan = synthesize(labels, tmp_path / "out.tif", synthesis_model, classes)
    assert out.shape == (3, 38, 45) and profile["dtype"] == "uint8"
    assert profile["transform"] == NORTH_UP and profile["crs"].to_epsg() == 32633
    assert profile["nodata"] is None  # every px has a class
    assert out.std() > 5  # an image, not a constant
    import rasterio

    with rasterio.open(tmp_path / "out.tif") as ds:
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
    assert plan.labels.mapping == ((11, 0), (21, 3), (41, 5), (90, 2))
    assert plan.summary()["label_values"] == 4


def test_px_without_a_class_are_nodata(tmp_path, synthesis_model):
    labels, values = land_cover(tmp_path / "labels.tif", values=(11, 21, 41, 90, 0), nodata=255)
    data = read_raster(labels)[0]
    data[0, :5, :6] = 255
    make_raster(labels, data=data, nodata=255)
    classes = write_classes(tmp_path / "classes.json", NLCD | {0: None})
    (out, profile), plan = synthesize(labels, tmp_path / "out.tif", synthesis_model, classes)
    empty = (data[0] == 255) | (data[0] == 0)
    assert profile["nodata"] == 0
    assert (out[:, empty] == 0).all()
    assert (out[:, ~empty] >= 1).all()  # generated px never read as nodata
    assert plan.labels.unlabelled_px == int(empty.sum())


def test_values_are_class_ids_without_a_classes_file(tmp_path, synthesis_model):
    labels, _ = land_cover(tmp_path / "labels.tif", values=(0, 3, 5, 2))
    mapped, _ = land_cover(tmp_path / "codes.tif")
    classes = write_classes(tmp_path / "classes.yaml", NLCD)
    (direct, _), _ = synthesize(labels, tmp_path / "direct.tif", synthesis_model)
    (via_file, _), _ = synthesize(mapped, tmp_path / "mapped.tif", synthesis_model, classes)
    np.testing.assert_array_equal(direct, via_file)


def test_conditioning_is_compvis_rescaler_and_tiles_exactly(synthesis_model):
    """Lookup then bilinear x0.5 twice == one-hot -> bilinear x0.5 twice -> 1x1 conv (CompVis'
    SpatialRescaler), and a box's conditioning is the crop of a larger box's."""
    import torch
    import torch.nn.functional as F
    from safetensors.numpy import load_file

    from tiler.tasks.synthesis import LabelConditioner
    from tiler.workdir.plan import LabelPlan

    weight = load_file(str(synthesis_model / "cond_stage" / "label_rescaler.safetensors"))[
        "channel_mapper.weight"
    ]
    plan = LabelPlan(
        classes=CLASSES,
        mapping=tuple((v, v) for v in range(CLASSES)),
        labelled_px=1,
        unlabelled_px=0,
    )
    conditioner = LabelConditioner(plan, None, weight, 2, 0.5, "bilinear")
    labels = np.random.default_rng(0).integers(0, CLASSES, size=(1, 64, 96))

    one_hot = F.one_hot(torch.from_numpy(labels[0]), CLASSES).permute(2, 0, 1)[None].float()
    for _ in range(2):
        one_hot = F.interpolate(one_hot, scale_factor=0.5, mode="bilinear")
    compvis = F.conv2d(one_hot, torch.from_numpy(weight))[0].numpy()
    ours = conditioner.condition(labels)
    assert ours.shape == (3, 16, 24)
    np.testing.assert_allclose(ours, compvis, atol=1e-5)
    part = conditioner.condition(labels[:, 16:48, 40:84])  # latent box (4:12, 10:21)
    np.testing.assert_array_equal(part, ours[:, 4:12, 10:21])
    assert conditioner.margin() == 0


def test_batch_size_and_workers_do_not_change_a_bit(tmp_path, synthesis_model):
    labels, _ = land_cover(tmp_path / "labels.tif", values=(0, 1, 2, 3, 4, 5))
    (one, _), _ = synthesize(labels, tmp_path / "one.tif", synthesis_model, batch_size=1)
    (many, _), _ = synthesize(
        labels, tmp_path / "many.tif", synthesis_model, batch_size=7, workers=2
    )
    np.testing.assert_array_equal(one, many)


def test_killed_run_resumes_to_the_same_output(tmp_path, synthesis_model):
    labels, _ = land_cover(
        tmp_path / "labels.tif", height=128, width=128, values=(0, 1, 2, 3, 4, 5)
    )
    args = ("--model", synthesis_model, *CLI, "--steps", "6", "--workers", "1")
    assert_resumes_after_kill("synthesize", labels, args, tmp_path, regions=16)


def test_cli_runs_and_the_seam_report_reads_the_output(tmp_path, synthesis_model):
    labels, _ = land_cover(tmp_path / "labels.tif", height=40, width=48)
    classes = write_classes(tmp_path / "classes.yaml", NLCD)
    out = tmp_path / "out.tif"
    ok = run_tiler(
        "synthesize", labels, out, "--model", synthesis_model, "--classes", classes, *CLI
    )
    assert ok.returncode == 0, ok.stderr
    assert shown_lines(ok.stderr)[-1].startswith(f"tiler: wrote {out}")
    result = run_tiler("qa", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["geometry"]["scale"] == 4 and report["boundaries"]["tile"] > 0
    assert report["geometry"]["decode_tile"] == 8 and report["boundaries"]["decode"] > 0


def test_label_mapping_errors(tmp_path, synthesis_model, tiny_model):
    labels, _ = land_cover(tmp_path / "labels.tif")
    target = tmp_path / "new.tif"

    def refused(*args, code=1):
        return assert_one_error(
            run_tiler("synthesize", labels, target, "--model", synthesis_model, *args, *CLI),
            code,
            *map(str, args[1:2]),
        )

    partial = write_classes(tmp_path / "partial.yaml", {11: 0, 21: 1})
    line = refused("--classes", partial)
    assert "2 value(s) have no class in" in line and "41 (" in line and "90 (" in line
    line = refused()  # without a file the values must be class ids
    assert "class id(s) out of range: 11 -> 11" in line and "classes 0..5" in line
    big = write_classes(tmp_path / "big.yaml", NLCD | {90: 6})
    assert "90 -> 6" in refused("--classes", big)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "expected a mapping of raster values to class ids" in refused(
        "--classes", tmp_path / "list.yaml"
    )
    (tmp_path / "names.yaml").write_text("11: water\n")
    assert "11: 'water': expected an integer class id or null" in refused(
        "--classes", tmp_path / "names.yaml"
    )
    (tmp_path / "broken.json").write_text("{11: [")
    assert "not a readable YAML or JSON file" in refused("--classes", tmp_path / "broken.json")
    empty = write_classes(tmp_path / "none.yaml", {11: None, 21: None, 41: None, 90: None})
    assert "no px has a class" in refused("--classes", empty)

    floats = make_raster(tmp_path / "floats.tif", count=1, dtype="float32")
    assert_one_error(
        run_tiler("synthesize", floats, target, "--model", synthesis_model, *CLI),
        1,
        str(floats),
        "expected an integer raster of class ids",
    )
    rgb = make_raster(tmp_path / "rgb.tif", count=3)
    assert_one_error(
        run_tiler("synthesize", rgb, target, "--model", synthesis_model, "-b", "1,2", *CLI),
        1,
        "2 bands selected",
        "expected one band",
    )
    assert_one_error(
        run_tiler("synthesize", labels, target, "--model", tiny_model, *CLI),
        2,
        "is a superres model (LDMSuperResolutionPipeline); expected a synthesis model",
    )
    assert_no_output(target)


def test_signed_labels_with_nodata_are_scanned_and_mapped(tmp_path, synthesis_model):
    """int16 codes (negative ones too) with a nodata value: every value found is mapped, nodata
    px are counted as without a class, and the plan holds only the values present."""
    labels, values = land_cover(
        tmp_path / "labels.tif", values=(-5, 300, 7, -9999), dtype="int16", nodata=-9999
    )
    classes = write_classes(tmp_path / "classes.yaml", {-5: 1, 300: 2, 7: None, 12: 3})
    plan = plan_synthesize(
        labels,
        tmp_path / "out.tif",
        model=str(synthesis_model),
        classes_file=classes,
        diffusion=FAST,
        **GRID,
    )
    assert plan.labels.mapping == ((-5, 1), (7, None), (300, 2))
    no_class = int(((values == -9999) | (values == 7)).sum())
    assert plan.labels.unlabelled_px == no_class and plan.output.nodata == 0
    assert plan.labels.labelled_px == values.size - no_class
