"""A workdir and outputs made by an older tiler still resume and still read.

tests/fixtures/legacy/ was made once, by the code at commit 019ebb9, and is never regenerated: it is
what users' disks hold from before the module reorganisation. How it was made (the exact commands
and the generator's text) is in tests/fixtures/legacy/README.md; identity.json records what the
tests restore. In short, under the root /tmp/tiler-legacy-019ebb9:

    make_raster(ROOT/input.tif, width=264, height=8, count=3, dtype="uint8", seed=7)   # stored
    save_tiny_sr_model(ROOT/tiny-sr, seed=0)                                           # rebuilt
    here
    os.utime(input.tif and both *.safetensors, ns=(1700000000000000000,) * 2)
    tiler plan    ROOT/input.tif ROOT/out.tif --model ROOT/tiny-sr --device cpu GRID --json
    tiler upscale ROOT/input.tif ROOT/out.tif --model ROOT/tiny-sr --device cpu --workers 1 GRID \
                  --keep-workdir
    tiler upscale ROOT/input.tif ROOT/nearest.zarr --model nearest
    GRID = --tile 16 --overlap 4 --region 24 --halo 4 --steps 3 --decode-tile 16 --decode-halo 4

then out.tif was renamed reference.tif, and the run was cut short: the done flag of decode unit
(0, 0) (out.tif.tiler/done/decode/c/0/0) and that unit's output chunk (out.tif.tiler/output/c/0/0/0)
were deleted, leaving decode unit (0, 1) done. Plans hold absolute paths, so the root is stored as
the placeholder @ROOT@ in the workdir's plan attribute, in reference.tif's TILER_PLAN tag and in
nearest.zarr's attributes.

These tests import no tiler module, only the CLI (in a subprocess), so they keep testing the promise
whatever the package's modules are called: run the old command again and the old workdir resumes,
computing only the undone units, to the old output bit for bit; `tiler qa` reads the old outputs;
`tiler plan` gives the same fingerprint the old code gave.

The fingerprint hashes absolute paths, so it equals the recorded one only on the root the fixture
was made under: the fingerprint test, and the in-place variant of the resume test, use that root
itself (under a lock, removed afterwards; skipped where it cannot be used). The relocated variant
and the qa tests use a copy under tmp_path with the placeholder replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import read_raster, run_tiler, shown_lines
from tiny_models import save_tiny_sr_model

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
IDENTITY = json.loads((FIXTURE / "identity.json").read_text())
PLACEHOLDER = IDENTITY["placeholder"]
# The root the fixture was made under. The fingerprint hashes absolute paths (input, model folder,
# weight files), so the old code's fingerprint can only be compared on this very root.
MADE_AT = Path(IDENTITY["made_at_root"])
PLAN_TAG = "TILER_PLAN"
SUMMARY_COUNTS = re.compile(r"(\w+) (\d+)/(\d+)")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def at(root: Path, args) -> list[str]:
    return [arg.replace(PLACEHOLDER, str(root)) for arg in args]


def replaced(value, new: str):
    """``value`` (JSON data) with the placeholder replaced by ``new`` in every string."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, new)
    if isinstance(value, list):
        return [replaced(item, new) for item in value]
    if isinstance(value, dict):
        return {key: replaced(item, new) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory) -> Path:
    """The fixture's tiny model, rebuilt by the test helper: it must be byte-identical to the one
    the fixture was made with (its weights decide the decoded pixels, their sizes the
    fingerprint)."""
    model = IDENTITY["model"]
    folder = tmp_path_factory.mktemp("legacy-model")
    save_tiny_sr_model(folder / model["path"], seed=model["seed"])
    for weight in model["weights"]:
        path = folder / weight["path"]
        if (path.stat().st_size, sha256(path)) != (weight["size"], weight["sha256"]):
            pytest.fail(
                f"tests/tiny_models.py no longer rebuilds {weight['path']} byte for byte "
                f"(the fixture was made with {IDENTITY['made_with']}): the legacy fixture "
                "cannot be checked; restore the helper's model, not the fixture"
            )
    return folder / model["path"]


def place_inputs(root: Path, model: Path):
    """The input raster and the model at ``root``, with the sizes and mtimes the plan recorded."""
    entry = IDENTITY["input"]
    shutil.copyfile(FIXTURE / entry["path"], root / entry["path"])
    shutil.copytree(model, root / IDENTITY["model"]["path"])
    for item in (entry, *IDENTITY["model"]["weights"]):
        path = root / item["path"]
        os.utime(path, ns=(item["mtime_ns"], item["mtime_ns"]))
        assert path.stat().st_size == item["size"] and path.stat().st_mtime_ns == item["mtime_ns"]
    assert sha256(root / entry["path"]) == entry["sha256"]


def place_outputs(root: Path):
    """The workdir and the outputs at ``root``, the placeholder replaced by ``root`` where it was
    put: the workdir's plan attribute, the Zarr output's attributes, the GeoTIFF's plan tag."""
    new = str(root)
    assert json.dumps(new) == f'"{new}"', "the root must need no escaping inside the plan's JSON"
    for name in (IDENTITY["workdir"], IDENTITY["zarr_output"]):
        shutil.copytree(FIXTURE / name, root / name)
        meta = root / name / "zarr.json"
        data = json.loads(meta.read_text())
        data["attributes"] = replaced(data["attributes"], new)
        meta.write_text(json.dumps(data, indent=2))
    reference = root / IDENTITY["reference"]
    shutil.copyfile(FIXTURE / IDENTITY["reference"], reference)
    with rasterio.open(reference, "r+") as dst:
        plan = dst.tags()[PLAN_TAG]
        assert PLACEHOLDER in plan
        dst.update_tags(**{PLAN_TAG: plan.replace(PLACEHOLDER, new)})
    assert not (root / "out.tif").exists()  # the resumed run must write it


@pytest.fixture
def made_at_root():
    """The root the fixture was made under, for this test alone (other processes that want it wait
    on a lock), emptied before and removed after. Skipped where it cannot be used as made."""
    if MADE_AT.resolve() != MADE_AT:
        pytest.skip(f"{MADE_AT} is a link here: the plan's resolved paths would differ")
    try:
        lock = open(f"{MADE_AT}.lock", "a")
    except OSError as exc:
        pytest.skip(f"cannot lock {MADE_AT}: {exc}")
    import fcntl

    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(MADE_AT, ignore_errors=True)
            try:
                MADE_AT.mkdir()
            except OSError as exc:
                pytest.skip(f"cannot make {MADE_AT}: {exc}")
            yield MADE_AT
        finally:
            shutil.rmtree(MADE_AT, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(params=["relocated", "in-place"])
def root(request, tmp_path) -> Path:
    """relocated: a copy under tmp_path (the placeholder replaced by it); in-place: the very root
    the
    fixture was made under, so the workdir is byte for byte what the old code left."""
    if request.param == "in-place":
        return request.getfixturevalue("made_at_root")
    return tmp_path.resolve()  # the plan holds resolved model paths


def test_cut_short_workdir_resumes_to_the_old_output(root, legacy_model):
    place_inputs(root, legacy_model)
    place_outputs(root)
    result = run_tiler(*at(root, IDENTITY["upscale_args"]))
    assert result.returncode == 0, result.stderr
    summary = shown_lines(result.stderr)[-1]
    assert summary.startswith("tiler: wrote ") and "(resumed)" in summary, result.stderr
    computed = {
        stage: (int(done), int(total)) for stage, done, total in SUMMARY_COUNTS.findall(summary)
    }
    ny, nx = IDENTITY["decode_units"]
    assert computed.pop("decode") == (len(IDENTITY["decode_units_cut"]), ny * nx), summary
    assert computed and all(done == 0 for done, _ in computed.values()), (
        summary
    )  # nothing else redone
    out, profile = read_raster(root / "out.tif")
    reference, reference_profile = read_raster(root / IDENTITY["reference"])
    np.testing.assert_array_equal(out, reference)
    for key in ("width", "height", "count", "dtype", "nodata", "crs", "transform"):
        assert profile[key] == reference_profile[key], key
    with rasterio.open(root / "out.tif") as src:
        assert PLAN_TAG in src.tags()


# What the report says of the geometry, which it can only know from the plan stored in the output.
@pytest.mark.parametrize(
    "name, geometry",
    ids=["geotiff", "zarr"],
    argvalues=[
        (
            "reference",
            ("1056 x 32 px", "tile 16", "overlap 4", "region 24", "decode tile 16", "scale 4"),
        ),
        ("zarr_output", ("1056 x 32 px", "tile 128", "overlap 0", "region 256", "scale 4")),
    ],
)
def test_qa_reads_the_old_outputs(tmp_path, name, geometry):
    root = tmp_path.resolve()
    place_outputs(root)
    output = root / IDENTITY[name]
    result = run_tiler("qa", output)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith(str(output)), result.stdout
    assert all(fragment in lines[0] for fragment in geometry), result.stdout
    assert any(line.startswith("seam index") for line in lines), result.stdout


def test_plan_gives_the_old_fingerprint(made_at_root, legacy_model):
    """Same command, same files, same paths: the fingerprint `tiler plan` prints is the one the old
    `tiler plan` printed, and the one the old run wrote into its workdir."""
    place_inputs(made_at_root, legacy_model)
    result = run_tiler(*at(made_at_root, IDENTITY["plan_args"]))
    assert result.returncode == 0, result.stderr
    fingerprint = json.loads(result.stdout)["fingerprint"]
    assert fingerprint == IDENTITY["fingerprint"]
    marker = FIXTURE / IDENTITY["workdir"] / "tiler_workdir"
    assert marker.read_text().strip() == IDENTITY["fingerprint"]
