"""``tiler run``: YAML workflows over several generated rasters with classical and tiny models;
re-runs skip what is up to date, a changed option recomputes only the affected steps, schema errors
name file:line and key path, a failing file does not stop the others."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import NORTH_UP, make_raster, read_raster, run_tiler, shown_lines

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_inpaint_model(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_inpaint_model

    return save_tiny_inpaint_model(tmp_path_factory.mktemp("models") / "tiny-inpaint")
@pytest.fixture(scope="module")
def tiny_synthesis_model(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_synthesis_model

    # COCO-Stuff's 182 classes, as the real model (and the example's class mapping)
    return save_tiny_synthesis_model(tmp_path_factory.mktemp("models") / "tiny-synthesis", classes=182)


EXAMPLES = sorted((REPO / "workflows").glob("*.yaml"))
TINY_GRID = {"tile": 16, "overlap": 4, "region": 24, "halo": 4, "steps": 2, "decode-tile": 16,
             "decode-halo": 4, "device": "cpu"}

CHAIN = """\
inputs: ["scans/*.tif"]
defaults:
  device: cpu
steps:
  - name: sr
    task: upscale
    model: {model}
    tile: 16
    overlap: 4
    region: 24
    halo: 4
    steps: 2
    decode-tile: 16
    decode-halo: 4
    output: "out/{{stem}}_sr.tif"
  - name: half
    task: upscale
    model: nearest
    scale: 2
    output: "out/{{stem}}_sr_x2.tif"
  - name: cog
    task: export
    format: COG
    output: "published/{{stem}}.tif"
"""


def write_workflow(folder: Path, text: str, name="workflow.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def make_scans(folder: Path, count: int = 3, **options) -> list[Path]:
    (folder / "scans").mkdir(exist_ok=True)
    return [make_raster(folder / "scans" / f"scan{i}.tif", width=24, height=20, seed=i, **options)
            for i in range(count)]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.tif")}


def summary(result) -> str:
    lines = shown_lines(result.stderr)
    return next(line for line in reversed(lines) if " done, " in line)


def test_three_step_chain_then_skip_then_only_affected_steps(tmp_path, tiny_model):
    scans = make_scans(tmp_path)
    workflow = write_workflow(tmp_path, CHAIN.format(model=tiny_model))

    first = run_tiler("run", workflow)
    assert first.returncode == 0, first.stderr
    assert "3 done, 0 skipped (up to date), 0 failed, of 3 files" in summary(first)
    for scan in scans:
        final = tmp_path / "published" / f"{scan.stem}.tif"
        data, profile = read_raster(final)
        assert (profile["width"], profile["height"]) == (24 * 8, 20 * 8)
        assert profile["transform"].almost_equals(NORTH_UP @ NORTH_UP.scale(1 / 8))
        np.testing.assert_array_equal(data, read_raster(tmp_path / "out" / f"{scan.stem}_sr_x2.tif")[0])
        assert not Path(f"{final}.tiler").exists() and not Path(f"{final}.partial").exists()
    before = mtimes(tmp_path)

    again = run_tiler("run", workflow)
    assert again.returncode == 0, again.stderr
    assert "0 done, 3 skipped (up to date), 0 failed, of 3 files" in summary(again)
    assert mtimes(tmp_path) == before

    changed = run_tiler("run", workflow, "--set", "steps.half.scale=3")
    assert changed.returncode == 0, changed.stderr
    after = mtimes(tmp_path)
    for scan in scans:
        assert after[f"out/{scan.stem}_sr.tif"] == before[f"out/{scan.stem}_sr.tif"]  # upstream kept
        assert after[f"out/{scan.stem}_sr_x2.tif"] != before[f"out/{scan.stem}_sr_x2.tif"]
        assert after[f"published/{scan.stem}.tif"] != before[f"published/{scan.stem}.tif"]
        with rasterio.open(tmp_path / "published" / f"{scan.stem}.tif") as src:
            assert (src.width, src.height) == (24 * 12, 20 * 12)


def test_export_only_change_recomputes_only_the_export(tmp_path):
    make_scans(tmp_path, count=2)
    workflow = write_workflow(tmp_path, CHAIN.format(model="bicubic").replace(
        "    tile: 16\n    overlap: 4\n    region: 24\n    halo: 4\n    steps: 2\n"
        "    decode-tile: 16\n    decode-halo: 4\n", "    scale: 2\n"))
    assert run_tiler("run", workflow, "-q").returncode == 0
    before = mtimes(tmp_path)
    result = run_tiler("run", workflow, "--set", "steps[2].co.COMPRESS=ZSTD")
    assert result.returncode == 0, result.stderr
    after = mtimes(tmp_path)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["published/scan0.tif", "published/scan1.tif"]
    with rasterio.open(tmp_path / "published" / "scan0.tif") as src:
        assert src.compression.name.upper() == "ZSTD"


def test_a_failing_file_is_reported_and_the_others_complete(tmp_path):
    make_scans(tmp_path, count=3)
    (tmp_path / "scans" / "scan1.tif").write_text("not a raster")
    workflow = write_workflow(tmp_path, (REPO / "workflows" / "minimal.yaml").read_text())
    result = run_tiler("run", workflow)
    assert result.returncode == 1
    assert "2 done, 0 skipped (up to date), 1 failed, of 3 files" in summary(result)
    failed = [line for line in shown_lines(result.stderr) if line.startswith("tiler: failed: ")]
    assert len(failed) == 1 and "scan1.tif" in failed[0] and "not a raster" in failed[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan0_x4.tif", "scan2_x4.tif"]

    fast = run_tiler("run", workflow, "--fail-fast", "--set", "steps[0].scale=2")
    assert fast.returncode == 1
    assert "1 done, 0 skipped (up to date), 1 failed, of 3 files" in summary(fast)


def test_outputs_not_written_by_tiler_are_not_replaced(tmp_path):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(tmp_path, (REPO / "workflows" / "minimal.yaml").read_text())
    (tmp_path / "out").mkdir()
    foreign = tmp_path / "out" / "scan0_x4.tif"
    foreign.write_bytes(b"someone else's file")
    result = run_tiler("run", workflow)
    assert result.returncode == 1
    assert "exists and was not written by tiler; pass --overwrite" in result.stderr
    assert foreign.read_bytes() == b"someone else's file"
    assert run_tiler("run", workflow, "--overwrite").returncode == 0
    assert read_raster(foreign)[1]["width"] == 96


def test_two_files_writing_one_output_is_refused(tmp_path):
    make_scans(tmp_path, count=2)
    text = (REPO / "workflows" / "minimal.yaml").read_text().replace("{stem}_x4", "all_x4")
    result = run_tiler("run", write_workflow(tmp_path, text))
    assert result.returncode == 2
    assert "steps[0].output" in result.stderr and "put {stem} in the output template" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_examples_validate_and_dry_run(tmp_path, example, tiny_model, tiny_inpaint_model,
                                      tiny_synthesis_model):
    """Each example, copied beside generated rasters (label maps for a synthesis example, masks
    where it names them), dry-runs (LDM steps with the tiny models: the real ones are not on this
    machine), then runs."""
    import yaml

    workflow = tmp_path / example.name
    shutil.copy(example, workflow)
    for extra in example.parent.glob("*.txt"):
        shutil.copy(extra, tmp_path)
    shutil.copytree(example.parent / "classes", tmp_path / "classes")
    data = yaml.safe_load(example.read_text())
    folder = tmp_path / Path(data["inputs"][0]).parent
    folder.mkdir(parents=True, exist_ok=True)
    if data["steps"][0]["task"] == "synthesize":
        scans = [make_landcover(folder / f"map{i}.tif", 20, 24, seed=i) for i in range(2)]
    else:
        scans = [make_raster(folder / f"scan{i}.tif", width=24, height=20, seed=i) for i in range(2)]
    for step in data["steps"]:
        if step.get("mask"):
            for scan in scans:
                make_mask(tmp_path / step["mask"].format(stem=scan.stem), 20, 24)
    overrides = model_overrides(data, {"upscale": tiny_model, "inpaint": tiny_inpaint_model,
                                       "synthesize": tiny_synthesis_model})
    dry = run_tiler("run", workflow, "--dry-run", *overrides)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "total: 2 files" in dry.stdout and "would run" in dry.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    result = run_tiler("run", workflow, "-q", *overrides)
    assert result.returncode == 0, result.stderr


def make_mask(path: Path, height: int, width: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    area = np.zeros((1, height, width), dtype="uint8")
    area[0, 4:9, 6:12] = 1
    return make_raster(path, data=area)


def make_landcover(path: Path, height: int, width: int, seed: int):
    """A map of WorldCover codes (the example's class mapping), 0 = no data in a corner."""
    codes = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100], dtype="uint8")
    y, x = np.mgrid[0:height, 0:width]
    labels = codes[1 + ((y // 5 + x // 6 + seed) % (len(codes) - 1))]
    labels[:3, :3] = 0
    return make_raster(path, data=labels[None], nodata=0)


def model_overrides(data: dict, tiny_models: dict[str, Path]) -> list[str]:
    """--set options pointing the workflow's LDM steps at the tiny models, with a small grid."""
    overrides = []
    for index, step in enumerate(data["steps"]):
        model = None
        if step["task"] in ("inpaint", "synthesize"):
            model = tiny_models[step["task"]]
        elif step["task"] == "upscale" and str(step.get("model", "CompVis/")).startswith("CompVis/"):
            model = tiny_models["upscale"]
        if model is not None:
            overrides += ["--set", f"steps[{index}].model={model}"]
            grid = TINY_GRID | ({"tile": 8, "overlap": 2, "region": 8, "halo": 2, "decode-tile": 8,
                                 "decode-halo": 2} if step["task"] != "upscale" else {})
            overrides += [part for key, value in grid.items()
                          for part in ("--set", f"steps[{index}].{key}={value}")]
    return overrides


# --- schema errors: file:line, key path, value, what is allowed --------------------------------------
GOOD = """\
inputs: ["scans/*.tif"]
steps:
  - name: up
    task: upscale
    model: nearest
    scale: 4
    output: "out/{stem}_x4.tif"
"""


@pytest.mark.parametrize("edit, line, fragments", [
    (("    scale: 4", "    scale: 40"), 6, ["steps[0].scale", "40", "less than or equal to 16"]),
    (("    scale: 4", "    scale: 4\n    overlapp: 2"), 7, ["steps[0].overlapp", "unknown key",
                                                          "did you mean 'overlap'"]),
    (("    task: upscale", "    task: upscal"), 4, ["steps[0].task", "'upscal' is not a task",
                                                    "upscale, inpaint, synthesize, export"]),
    (('"out/{stem}_x4.tif"', '"out/{stme}_x4.tif"'), 7, ["steps[0].output", "{stme}", "{stem}"]),
    (('    output: "out/{stem}_x4.tif"\n', ""), 3, ["steps[0].output", "missing"]),
    (("steps:", "cluster: {cluster: yarn}\nsteps:"), 2, ["cluster.cluster", "'yarn'", "'local'"]),
    (("steps:", "defaults: {overlapp: 2}\nsteps:"), 2, ["defaults.overlapp", "did you mean 'overlap'"]),
    (("    scale: 4", "    scale: 4\n    scale: 5"), 7, ["steps[0].scale", "duplicate key"]),
    (("    scale: 4", "    scale: [4"), 7, ["not valid YAML"]),
    (("inputs:", "inputz:"), 1, ["inputz", "unknown key"]),
    (("    task: upscale\n    model: nearest\n    scale: 4", "    task: inpaint\n    model: m"), 3,
     ["steps[0]: steps with task inpaint need exactly one of mask, mask-nodata, mask-band; got none"]),
], ids=["value", "unknown-key", "task", "template", "missing", "cluster", "defaults", "duplicate",
        "yaml", "top-level", "inpaint-mask"])
def test_schema_errors_name_file_line_and_key_path(tmp_path, edit, line, fragments):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(tmp_path, GOOD.replace(*edit))
    result = run_tiler("run", workflow)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [entry for entry in shown_lines(result.stderr) if entry.startswith("tiler: error: ")]
    assert errors, result.stderr
    assert errors[0].startswith(f"tiler: error: {workflow}:{line}: "), errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_every_schema_error_is_reported_at_once(tmp_path):
    text = GOOD.replace("    scale: 4", "    scale: 0\n    tile: -1\n    colour: red")
    result = run_tiler("run", write_workflow(tmp_path, text))
    errors = [entry for entry in shown_lines(result.stderr) if entry.startswith("tiler: error: ")]
    assert [re.search(r"steps\[0\]\.\w+", e).group() for e in errors] == [
        "steps[0].scale", "steps[0].tile", "steps[0].colour"]


def test_plan_errors_name_the_step_key(tmp_path):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(tmp_path, GOOD.replace("    scale: 4", "    scale: 4\n    tile: 8\n    overlap: 8"))
    result = run_tiler("run", workflow, "--dry-run")
    assert result.returncode == 1
    assert f"{workflow}:8: steps[0].overlap: 8 is out of range" in result.stdout


def test_set_errors_and_steps_by_name(tmp_path):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(tmp_path, GOOD)
    bad = run_tiler("run", workflow, "--set", "steps.nope.scale=2")
    assert bad.returncode == 2 and "no step named 'nope'" in bad.stderr
    value = run_tiler("run", workflow, "--set", "steps.up.scale=zero")
    assert value.returncode == 2 and "steps[0].scale (from --set): 'zero'" in value.stderr
    ok = run_tiler("run", workflow, "--set", "steps.up.scale=2", "--dry-run")
    assert ok.returncode == 0 and "nearest x2" in ok.stdout


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    result = run_tiler("run", write_workflow(tmp_path, text))
    assert result.returncode == 2 and not marker.exists()
    assert "not valid YAML" in result.stderr


def test_workflow_on_a_local_dask_cluster(tmp_path):
    """The cluster section: one local cluster of 2 worker processes serves every step of every
    file, and the outputs equal the in-process run's."""
    make_scans(tmp_path, count=2)
    chain = CHAIN.format(model="bicubic").replace(
        "    tile: 16\n    overlap: 4\n    region: 24\n    halo: 4\n    steps: 2\n"
        "    decode-tile: 16\n    decode-halo: 4\n", "    scale: 2\n    region: 8\n")
    threads = write_workflow(tmp_path, chain.replace("out/", "threads/"), "threads.yaml")
    dask = write_workflow(tmp_path, chain.replace("steps:", "cluster: {cluster: local, workers: 2}\nsteps:"),
                          "dask.yaml")
    assert run_tiler("run", threads, "-q").returncode == 0
    result = run_tiler("run", dask, "-v")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Dask executor: 2 workers") == 6  # 3 steps x 2 files
    assert result.stderr.count("Dask dashboard") == 1  # reported once per connection: one cluster
    assert "2 done, 0 skipped (up to date), 0 failed, of 2 files" in summary(result)
    for name in ("scan0", "scan1"):
        np.testing.assert_array_equal(read_raster(tmp_path / "out" / f"{name}_sr_x2.tif")[0],
                                      read_raster(tmp_path / "threads" / f"{name}_sr_x2.tif")[0])
