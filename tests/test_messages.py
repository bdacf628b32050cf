"""Messages (issue 16, item 6): click's own usage errors in tiler's one-line form; a damaged input
named with GDAL's reason; -q silences progress and warnings, never what failed."""

from __future__ import annotations

import pytest
from conftest import make_raster, run_tiler, shown_lines


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("upscale", "--workers", "0", "in.tif"), "Invalid value for '--workers'"),
        (("upscale", "in.tif", "out.tif", "--bogus"), "No such option '--bogus'"),
        (("upscale",), "Missing argument 'INPUT'"),
        (("upscale", "missing.tif"), "'missing.tif' does not exist"),
        (("upscale", "in.tif", "out.tif", "--format", "bogus"), "Invalid value for '--format'"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
)
def test_click_usage_errors_are_one_tiler_line(tmp_path, args, text):
    make_raster(tmp_path / "in.tif", width=16, height=12)
    result = run_tiler(*args, cwd=tmp_path)
    lines = shown_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("tiler: error: ") and text in lines[0], lines[0]
    assert "--help" in lines[0]


def test_a_truncated_input_is_named_with_gdals_reason(tmp_path):
    src = make_raster(tmp_path / "in.tif", width=600, height=600)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    result = run_tiler("upscale", cut, tmp_path / "out.tif", "--model", "nearest", "-q")
    lines = shown_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert str(cut) in lines[0] and "truncated or damaged file?" in lines[0]
    assert "See previous exception" not in lines[0]


def test_quiet_hides_warnings_and_progress_never_failures(tmp_path):
    (tmp_path / "scans").mkdir()
    scan = make_raster(tmp_path / "scans" / "a.tif", width=16, height=12, crs=None, transform=None)
    quiet = run_tiler("upscale", scan, tmp_path / "a_x4.tif", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # no NotGeoreferencedWarning
    (tmp_path / "scans" / "b.tif").write_text("not a raster\n")
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        'inputs: ["scans/*.tif"]\nsteps:\n  - name: up\n    task: upscale\n    model: nearest\n'
        '    output: "out/{stem}_x4.tif"\n'
    )
    result = run_tiler("run", flow, "-q")
    assert result.returncode == 1
    assert "1 failed" in result.stderr and "failed: " in result.stderr and "b.tif" in result.stderr


def test_convert_names_what_is_wrong_with_the_checkpoint_itself(tmp_path):
    raster = make_raster(tmp_path / "scene.tif", width=16, height=12)
    (tmp_path / "config.yaml").write_text("model: {}\n")
    not_ckpt = run_tiler("convert", raster, tmp_path / "out")
    assert not_ckpt.returncode == 1 and "not a torch checkpoint" in not_ckpt.stderr
    missing = run_tiler("convert", tmp_path / "none.ckpt", tmp_path / "out")
    lines = shown_lines(missing.stderr)
    assert missing.returncode == 1 and len(lines) == 1, missing.stderr
    assert "none.ckpt: missing" in lines[0] and "config.yaml" not in lines[0]


def test_convert_removes_the_staging_folders_of_dead_runs(tmp_path):
    """A conversion SIGKILLed before its rename leaves .NAME.converting-PID-*; the next run
    removes those whose process is gone, and leaves a live run's alone."""
    import os

    dead = tmp_path / ".out.converting-999999999-abc123"
    live = tmp_path / f".out.converting-{os.getpid()}-def456"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "unet").mkdir()
    raster = make_raster(tmp_path / "scene.tif", width=16, height=12)
    (tmp_path / "config.yaml").write_text("model: {}\n")
    run_tiler("convert", raster, tmp_path / "out")  # refused, but after the clean-up
    assert not dead.exists() and live.exists()


def test_a_key_of_another_task_is_not_suggested_as_itself(tmp_path):
    (tmp_path / "scans").mkdir()
    make_raster(tmp_path / "scans" / "a.tif", width=16, height=12)
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        'inputs: ["scans/*.tif"]\ndefaults:\n  mask: m.tif\nsteps:\n  - name: up\n'
        '    task: upscale\n    model: nearest\n    output: "out/{stem}_x4.tif"\n'
    )
    result = run_tiler("run", flow)
    assert result.returncode == 2 and "defaults.mask: no step takes 'mask'" in result.stderr
    assert "did you mean" not in result.stderr
