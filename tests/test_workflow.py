"""``tiler run``: YAML workflows over several generated rasters with classical and tiny models;
re-runs skip what is up to date, a changed option recomputes only the affected steps, schema errors
name file:line and key path, a failing file does not stop the others."""

from __future__ import annotations

import os
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
    return save_tiny_synthesis_model(
        tmp_path_factory.mktemp("models") / "tiny-synthesis", classes=182
    )


# runnable as written (bundled sample and models), then those needing what is not bundled
RUNNABLE = sorted((REPO / "workflows").glob("*.yaml"))
EXAMPLES = RUNNABLE + sorted((REPO / "docs" / "examples").glob("*.yaml"))
TINY_GRID = {
    "tile": 16,
    "overlap": 4,
    "region": 24,
    "halo": 4,
    "steps": 2,
    "decode-tile": 16,
    "decode-halo": 4,
    "device": "cpu",
}

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
    return [
        make_raster(folder / "scans" / f"scan{i}.tif", width=24, height=20, seed=i, **options)
        for i in range(count)
    ]


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
        np.testing.assert_array_equal(
            data, read_raster(tmp_path / "out" / f"{scan.stem}_sr_x2.tif")[0]
        )
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
        assert (
            after[f"out/{scan.stem}_sr.tif"] == before[f"out/{scan.stem}_sr.tif"]
        )  # upstream kept
        assert after[f"out/{scan.stem}_sr_x2.tif"] != before[f"out/{scan.stem}_sr_x2.tif"]
        assert after[f"published/{scan.stem}.tif"] != before[f"published/{scan.stem}.tif"]
        with rasterio.open(tmp_path / "published" / f"{scan.stem}.tif") as src:
            assert (src.width, src.height) == (24 * 12, 20 * 12)


def test_export_only_change_recomputes_only_the_export(tmp_path):
    make_scans(tmp_path, count=2)
    workflow = write_workflow(
        tmp_path,
        CHAIN.format(model="bicubic").replace(
            "    tile: 16\n    overlap: 4\n    region: 24\n    halo: 4\n    steps: 2\n"
            "    decode-tile: 16\n    decode-halo: 4\n",
            "    scale: 2\n",
        ),
    )
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
    workflow = write_workflow(tmp_path, GOOD)
    result = run_tiler("run", workflow)
    assert result.returncode == 1
    assert "2 done, 0 skipped (up to date), 1 failed, of 3 files" in summary(result)
    failed = [line for line in shown_lines(result.stderr) if line.startswith("tiler: failed: ")]
    assert len(failed) == 1 and "scan1.tif" in failed[0] and "not a raster" in failed[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan0_x4.tif", "scan2_x4.tif"]

    fast = run_tiler("run", workflow, "--fail-fast", "--set", "steps[0].scale=2")
    assert fast.returncode == 1
    assert "1 done, 0 skipped (up to date), 1 failed, of 3 files" in summary(fast)


def test_paths_are_relative_to_the_workflow_file_model_folders_too(tmp_path, tiny_model):
    """Run from another directory, a workflow in flows/ reads ../scans, writes ../out and loads
    ../models/tiny-sr; '..' is folded in the paths shown."""
    make_scans(tmp_path, count=1)
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny-sr")
    (tmp_path / "flows").mkdir()
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)  # its ../models does not exist
    text = CHAIN.format(model="../models/tiny-sr").replace('"scans/', '"../scans/')
    workflow = write_workflow(tmp_path / "flows", text.replace('"out/', '"../out/'))
    result = run_tiler("run", workflow, "--dry-run", cwd=tmp_path / "elsewhere" / "deeper")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tmp_path / 'scans' / 'scan0.tif'}: would run" in result.stdout
    assert f"sr           would run  {tmp_path / 'models' / 'tiny-sr'} x4" in result.stdout
    assert f"-> {tmp_path / 'out' / 'scan0_sr.tif'}" in result.stdout


def test_outputs_not_written_by_tiler_are_not_replaced(tmp_path):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(tmp_path, GOOD)
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
    text = GOOD.replace("{stem}_x4", "all_x4")
    result = run_tiler("run", write_workflow(tmp_path, text))
    assert result.returncode == 2
    assert (
        "steps[0].output" in result.stderr and "put {stem} in the output template" in result.stderr
    )
    assert not (tmp_path / "out").exists()


def example_id(path: Path) -> str:
    return str(path.relative_to(REPO).with_suffix(""))


@pytest.mark.parametrize("example", EXAMPLES, ids=[example_id(path) for path in EXAMPLES])
def test_examples_validate_dry_run_and_run(
    tmp_path, example, tiny_model, tiny_inpaint_model, tiny_synthesis_model
):
    """Each example, in a copy of the repository's layout (workflows/ and docs/examples/ as they
    are; small generated rasters where its inputs point: uint16 scenes, label maps for a synthesis
    example, masks where it names them), dry-runs, then runs (LDM steps on the tiny models: the
    real ones are large or not bundled)."""
    import yaml

    shutil.copytree(REPO / "workflows", tmp_path / "workflows")
    shutil.copytree(REPO / "docs" / "examples", tmp_path / "docs" / "examples")
    workflow = tmp_path / example.relative_to(REPO)
    base = workflow.parent
    data = yaml.safe_load(workflow.read_text())
    synthesis = data["steps"][0]["task"] == "synthesize"
    scans = []
    for pattern in data["inputs"]:
        if not pattern.endswith(".tif"):
            continue  # e.g. "../samples/*.png": a glob that may match nothing
        names = (
            [pattern.replace("*", f"scan{i}") for i in range(2)] if "*" in pattern else [pattern]
        )
        for seed, name in enumerate(names):
            path = base / name
            path.parent.mkdir(parents=True, exist_ok=True)
            scans.append(
                make_landcover(path, 20, 24, seed=seed)
                if synthesis
                else make_raster(path, width=24, height=20, dtype="uint16", seed=seed)
            )
    for step in data["steps"]:
        if step.get("mask"):
            for scan in scans:
                make_mask(base / fill_template(step["mask"], scan, step["name"]), 20, 24)
    overrides = model_overrides(
        data,
        {"upscale": tiny_model, "inpaint": tiny_inpaint_model, "synthesize": tiny_synthesis_model},
    )
    before = sorted(tmp_path.rglob("*"))
    dry = run_tiler("run", workflow, "--dry-run", *overrides)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"total: {len(scans)} files" in dry.stdout and "would run" in dry.stdout
    assert sorted(tmp_path.rglob("*")) == before  # a dry run writes nothing
    result = run_tiler("run", workflow, "-q", *overrides)
    assert result.returncode == 0, result.stderr
    for scan in scans:
        for step in data["steps"]:
            assert (base / fill_template(step["output"], scan, step["name"])).is_file()


@pytest.mark.parametrize("example", RUNNABLE, ids=[example_id(path) for path in RUNNABLE])
def test_examples_dry_run_as_written_from_the_repository_root(example):
    """As a user runs them, ``tiler run workflows/X.yaml --dry-run`` in the repository root: the
    bundled sample, its cloud mask and the bundled models are where the example says."""
    import yaml

    from tiler.geometry.resample import KERNELS

    for step in yaml.safe_load(example.read_text())["steps"]:
        if step["task"] == "export" or step.get("model") in KERNELS:
            continue
        folder = Path(os.path.abspath(example.parent / step.get("model", "")))
        assert folder.parent == REPO / "models", f"step {step['name']}: not a bundled model"
        if not folder.is_dir():
            pytest.skip(
                f"bundled model {folder.relative_to(REPO)} is missing (it is committed "
                "with the repository once trained)"
            )
    result = run_tiler("run", example.relative_to(REPO), "--dry-run", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total: 1 files" in result.stdout  # samples/sentinel2_rgb.tif


def fill_template(template: str, input_file: Path, step: str) -> str:
    return template.format(
        stem=input_file.stem, name=input_file.name, input_dir=input_file.parent, step=step
    )


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
    from tiler.geometry.resample import KERNELS

    overrides = []
    for index, step in enumerate(data["steps"]):
        model = None
        if step["task"] in ("inpaint", "synthesize"):
            model = tiny_models[step["task"]]
        elif step["task"] == "upscale" and step.get("model") not in KERNELS:  # the default is LDM
            model = tiny_models["upscale"]
        if model is not None:
            overrides += ["--set", f"steps[{index}].model={model}"]
            grid = TINY_GRID | (
                {
                    "tile": 8,
                    "overlap": 2,
                    "region": 8,
                    "halo": 2,
                    "decode-tile": 8,
                    "decode-halo": 2,
                }
                if step["task"] != "upscale"
                else {}
            )
            overrides += [
                part
                for key, value in grid.items()
                for part in ("--set", f"steps[{index}].{key}={value}")
            ]
    return overrides


# --- schema errors: file:line, key path, value, what is allowed
# --------------------------------------
GOOD = """\
inputs: ["scans/*.tif"]
steps:
  - name: up
    task: upscale
    model: nearest
    scale: 4
    output: "out/{stem}_x4.tif"
"""


@pytest.mark.parametrize(
    "edit, line, fragments",
    [
        (
            ("    scale: 4", "    scale: 40"),
            6,
            ["steps[0].scale", "40", "less than or equal to 16"],
        ),
        (
            ("    scale: 4", "    scale: 4\n    overlapp: 2"),
            7,
            ["steps[0].overlapp", "unknown key", "did you mean 'overlap'"],
        ),
        (
            ("    task: upscale", "    task: upscal"),
            4,
            ["steps[0].task", "'upscal' is not a task", "upscale, inpaint, synthesize, export"],
        ),
        (
            ('"out/{stem}_x4.tif"', '"out/{stme}_x4.tif"'),
            7,
            ["steps[0].output", "{stme}", "{stem}"],
        ),
        (('    output: "out/{stem}_x4.tif"\n', ""), 3, ["steps[0].output", "missing"]),
        (
            ("steps:", "cluster: {cluster: yarn}\nsteps:"),
            2,
            ["cluster.cluster", "'yarn'", "'local'"],
        ),
        (
            ("steps:", "defaults: {overlapp: 2}\nsteps:"),
            2,
            ["defaults.overlapp", "did you mean 'overlap'"],
        ),
        (("    scale: 4", "    scale: 4\n    scale: 5"), 7, ["steps[0].scale", "duplicate key"]),
        (("    scale: 4", "    scale: [4"), 7, ["not valid YAML"]),
        (("inputs:", "inputz:"), 1, ["inputz", "unknown key"]),
        (
            (
                "    task: upscale\n    model: nearest\n    scale: 4",
                "    task: inpaint\n    model: m",
            ),
            3,
            [
                "steps[0]: steps with task inpaint need exactly one of mask, mask-nodata, "
                "mask-band; got none"
            ],
        ),
    ],
    ids=[
        "value",
        "unknown-key",
        "task",
        "template",
        "missing",
        "cluster",
        "defaults",
        "duplicate",
        "yaml",
        "top-level",
        "inpaint-mask",
    ],
)
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
        "steps[0].scale",
        "steps[0].tile",
        "steps[0].colour",
    ]


def test_plan_errors_name_the_step_key(tmp_path):
    make_scans(tmp_path, count=1)
    workflow = write_workflow(
        tmp_path, GOOD.replace("    scale: 4", "    scale: 4\n    tile: 8\n    overlap: 8")
    )
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
        "    decode-tile: 16\n    decode-halo: 4\n",
        "    scale: 2\n    region: 8\n",
    )
    threads = write_workflow(tmp_path, chain.replace("out/", "threads/"), "threads.yaml")
    dask = write_workflow(
        tmp_path,
        chain.replace("steps:", "cluster: {cluster: local, workers: 2}\nsteps:"),
        "dask.yaml",
    )
    assert run_tiler("run", threads, "-q").returncode == 0
    result = run_tiler("run", dask, "-v")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Dask executor: 2 workers") == 6  # 3 steps x 2 files
    assert result.stderr.count("Dask dashboard") == 1  # reported once per connection: one cluster
    assert "2 done, 0 skipped (up to date), 0 failed, of 2 files" in summary(result)
    for name in ("scan0", "scan1"):
        np.testing.assert_array_equal(
            read_raster(tmp_path / "out" / f"{name}_sr_x2.tif")[0],
            read_raster(tmp_path / "threads" / f"{name}_sr_x2.tif")[0],
        )
