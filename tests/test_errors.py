"""Bad inputs and failing runs through the real CLI: one error line on stderr naming the file, the
value and what was expected; exit 2 for usage errors, 1 for refused or failed runs; no traceback
unless -v; and never a file at OUTPUT (nor OUTPUT.partial) afterwards."""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import make_raster, read_raster, run_tiler, shown_lines

# libtiff's default error handler prints I/O failures straight to stderr (GDAL does not route them
# through its error handler, so neither GDAL nor tiler can silence them): "_tiffWriteProc: ...".
LIBTIFF_LINE = re.compile(r"^_tiff\w+Proc: ")


def assert_one_error(result, code: int, *fragments: str, ignore: re.Pattern | None = None) -> str:
    """``result`` exited ``code`` with one error line holding every fragment; returns that line.

    A usage error click detects itself comes after click's two usage lines, as rio's do."""
    stderr = result.stderr
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}; stderr:\n{stderr}"
    )
    assert "Traceback" not in stderr, stderr
    lines = [line for line in shown_lines(stderr) if not (ignore and ignore.match(line))]
    prefix = "tiler: error: "
    if code == 2 and lines and lines[0].startswith("Usage: "):
        assert lines[1].startswith("Try '") and lines[1].endswith("--help' for help."), stderr
        lines, prefix = lines[2:], "Error: "
    assert len(lines) == 1, f"expected one error line, got {lines}"
    line = lines[0]
    assert line.startswith(prefix), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_no_output(output: Path, workdir: bool = True):
    assert not output.exists(), f"{output} exists"
    assert not Path(f"{output}.partial").exists(), f"{output}.partial exists"
    if workdir:
        assert not Path(f"{output}.tiler").exists(), f"{output}.tiler (workdir) exists"


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def src(tmp_path) -> Path:
    return make_raster(tmp_path / "in.tif", width=40, height=24, count=3, dtype="uint8")


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out.tif"


# --- the input -----------------------------------------------------------------------------------
def test_missing_input_is_a_usage_error(tmp_path, out):
    missing = tmp_path / "missing.tif"
    assert_one_error(run_tiler("upscale", missing, out), 2, "INPUT", str(missing), "does not exist")
    assert_no_output(out)


def test_a_text_file_is_not_a_raster(tmp_path, out):
    text = tmp_path / "notes.tif"
    text.write_text("these are notes, not pixels\n")
    assert_one_error(run_tiler("upscale", text, out), 1, str(text), "not a raster")
    assert_no_output(out)


def test_an_empty_file_is_refused(tmp_path, out):
    empty = tmp_path / "empty.tif"
    empty.touch()
    assert_one_error(
        run_tiler("upscale", empty, out), 1, str(empty), "0 bytes", "expected a raster"
    )
    assert_no_output(out)


@pytest.mark.parametrize(
    "bands, fragments",
    [
        ("4", ["band 4", "out of range", "3 band(s)", "1..3"]),
        ("0", ["band 0", "1..3"]),
        ("1,x", ["'1,x'", "comma-separated list of band numbers"]),
    ],
)
def test_band_out_of_range_names_the_band_and_the_range(src, out, bands, fragments):
    line = assert_one_error(run_tiler("upscale", src, out, "-b", bands), 2, "-b/--bidx", *fragments)
    if bands != "1,x":
        assert str(src) in line
    assert_no_output(out)


@pytest.mark.parametrize("option", ["COMPRESS", "=ZSTD"])
def test_creation_option_without_name_and_value_is_a_usage_error(src, out, option):
    result = run_tiler("upscale", src, out, "--co", option)
    assert_one_error(result, 2, "--co", repr(option), "NAME=VALUE")
    assert_no_output(out)


@pytest.mark.parametrize("overlap", [32, 40])
def test_overlap_not_smaller_than_the_tile_is_a_usage_error(src, out, overlap):
    result = run_tiler("upscale", src, out, "--tile", 32, "--overlap", overlap)
    assert_one_error(result, 2, "--overlap", str(overlap), "0..31", "tile, 32")
    assert_no_output(out)


def test_unknown_model_is_a_usage_error(src, out):
    result = run_tiler("upscale", src, out, "--model", "superduper")
    assert_one_error(result, 2, "--model", "'superduper'", "nearest, bicubic, lanczos")
    assert_no_output(out)


def test_unknown_output_extension_is_a_usage_error(src, tmp_path):
    png = tmp_path / "out.png"
    result = run_tiler("upscale", src, png)
    assert_one_error(result, 2, "OUTPUT", "out.png", "'.png'", ".tif", "--format")
    assert_no_output(png)


def test_verbose_shows_the_traceback(tmp_path, out):
    text = tmp_path / "notes.tif"
    text.write_text("not pixels\n")
    result = run_tiler("upscale", text, out, "-v")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert shown_lines(result.stderr)[-1].startswith(f"tiler: error: {text}: not a raster")


# --- where the output goes -----------------------------------------------------------------------
def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs on ``folder`` if this process may (root); False if it cannot."""
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def _unmount(folder: Path):
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _can_write_into(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.fixture
def unwritable_folder(tmp_path, request) -> Path:
    """A folder this user may not write into: mode 0o500, or, where modes do not stop it (root),
    a read-only tmpfs mounted on it."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    request.addfinalizer(lambda: folder.chmod(0o700))
    if not _can_write_into(folder):
        return folder
    if not _mount_tmpfs(folder, "ro,size=1m"):
        pytest.skip("file modes do not stop this user (root) and no read-only tmpfs can be mounted")
    request.addfinalizer(lambda: _unmount(folder))
    return folder


def test_unwritable_output_folder_is_refused(src, unwritable_folder):
    target = unwritable_folder / "out.tif"
    result = run_tiler("upscale", src, target)
    assert_one_error(result, 1, str(target), str(unwritable_folder), "not writable")
    assert_no_output(target)


def test_missing_output_folder_is_refused(src, tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "out.tif"
    result = run_tiler("upscale", src, target)
    assert_one_error(result, 1, str(target), str(target.parent), "does not exist")
    assert not (tmp_path / "no").exists()


def test_output_folder_that_is_a_file_is_refused(src, tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("I am a file\n")
    target = regular / "out.tif"
    result = run_tiler("upscale", src, target)
    assert_one_error(result, 1, str(target), "is a file", "expected an output folder")
    assert regular.read_text() == "I am a file\n"


def test_workdir_that_is_a_file_is_a_usage_error(src, out, tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("I am a file\n")
    result = run_tiler("upscale", src, out, "--workdir", regular)
    assert_one_error(result, 2, "--workdir", "a-file", "is a file")
    assert regular.read_text() == "I am a file\n"
    assert_no_output(out)


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(src, out):
    out.write_bytes(b"an older result, not to be lost\n")
    result = run_tiler("upscale", src, out)
    assert_one_error(result, 1, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == b"an older result, not to be lost\n"
    assert not Path(f"{out}.partial").exists()
    assert not Path(f"{out}.tiler").exists()

    result = run_tiler("upscale", src, out, "--overwrite")
    assert result.returncode == 0, result.stderr
    pixels, profile = read_raster(out)
    assert pixels.shape == (3, 96, 160) and profile["dtype"] == "uint8"
    assert not Path(f"{out}.partial").exists()


# --- the workdir ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_workdir_is_refused_and_never_deleted(src, out, tmp_path, overwrite):
    foreign = tmp_path / "my-project"
    (foreign / "notes").mkdir(parents=True)
    (foreign / "thesis.tex").write_text("months of work\n")
    (foreign / "notes" / "zarr.json").write_text('{"not": "tiler"}\n')
    before = tree(foreign)
    flags = ["--overwrite"] if overwrite else []
    result = run_tiler("upscale", src, out, "--workdir", foreign, *flags)
    assert_one_error(result, 1, str(foreign), "not a tiler workdir", "--workdir")
    assert tree(foreign) == before
    assert_no_output(out)


def _run_keeping_workdir(src, out, *options) -> np.ndarray:
    """Run to the end keeping the workdir; return the output's pixels and remove the output."""
    result = run_tiler("upscale", src, out, "--keep-workdir", *options)
    assert result.returncode == 0, result.stderr
    pixels, _ = read_raster(out)
    out.unlink()
    return pixels


def _summary(result) -> str:
    line = shown_lines(result.stderr)[-1]
    assert line.startswith("tiler: wrote "), result.stderr
    return line


@pytest.mark.parametrize("damaged", ["zarr.json", "done/process/zarr.json", "output/zarr.json"])
def test_corrupt_workdir_is_refused_and_recomputed_with_overwrite(src, out, damaged):
    expected = _run_keeping_workdir(src, out)
    workdir = Path(f"{out}.tiler")
    (workdir / damaged).write_text("\x00garbage{")

    result = run_tiler("upscale", src, out)
    assert_one_error(result, 1, str(workdir), "corrupt", "--overwrite")
    assert_no_output(out, workdir=False)
    assert (workdir / damaged).read_text() == "\x00garbage{"

    result = run_tiler("upscale", src, out, "--overwrite")
    assert result.returncode == 0, result.stderr
    summary = _summary(result)
    assert "computed process 1/1" in summary and "resumed" not in summary
    assert np.array_equal(read_raster(out)[0], expected)
    assert not workdir.exists()


def test_workdir_of_another_plan_is_refused_and_replaced_with_overwrite(src, out):
    _run_keeping_workdir(src, out, "--tile", 32, "--region", 8)
    workdir = Path(f"{out}.tiler")
    before = tree(workdir)

    result = run_tiler("upscale", src, out, "--tile", 16, "--region", 8)
    assert_one_error(result, 1, str(workdir), "different plan", "--overwrite", "--workdir")
    assert tree(workdir) == before
    assert_no_output(out, workdir=False)

    result = run_tiler("upscale", src, out, "--tile", 16, "--region", 8, "--overwrite")
    assert result.returncode == 0, result.stderr
    summary = _summary(result)
    assert "computed process 15/15" in summary and "resumed" not in summary  # 3 x 5 regions of 8 px
    assert read_raster(out)[0].shape == (3, 96, 160)


# --- a disk that fills up ------------------------------------------------------------------------
SMALL_DISK = 2 * 2**20  # bytes that fit; the outputs below need several times more


@pytest.fixture(params=["tmpfs", "rlimit"])
def small_disk(request, tmp_path):
    """(folder, preexec_fn, reason): a folder where writing stops after SMALL_DISK bytes.

    tmpfs: a real full file system (ENOSPC); needs root and mount. rlimit: RLIMIT_FSIZE in the tiler
    process, SIGXFSZ ignored, so any write past the limit fails with EFBIG, in any folder."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if request.param == "tmpfs":
        if not _mount_tmpfs(folder, f"size={SMALL_DISK}"):
            pytest.skip("cannot mount a tmpfs here (needs root); the rlimit variant simulates it")
        request.addfinalizer(lambda: _unmount(folder))
        return folder, None, "No space left on device"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL_DISK // 2, SMALL_DISK // 2))

    return folder, limit_file_size, "File too large"


@pytest.fixture
def noisy_src(tmp_path) -> Path:
    """Noise compresses badly: the 4x output is about 5 MB on disk and in the workdir."""
    data = np.random.default_rng(7).integers(0, 256, (3, 320, 320), dtype=np.uint8)
    return make_raster(tmp_path / "noise.tif", data=data)


def test_disk_full_while_processing(noisy_src, small_disk):
    folder, preexec, reason = small_disk
    target = folder / "out.tif"  # the workdir, out.tif.tiler, fills the disk
    result = run_tiler("upscale", noisy_src, target, preexec_fn=preexec)
    assert_one_error(result, 1, f"{target}.tiler", "writing the workdir failed", reason)
    assert_no_output(target, workdir=False)


@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_disk_full_while_exporting(noisy_src, small_disk, tmp_path, fmt):
    folder, preexec, _ = small_disk
    target = folder / "out.tif"
    workdir = tmp_path / "workdir"  # small chunks (regions of 32 px): only the output is too big
    options = ("--region", 32, "--workdir", workdir, "--format", fmt)
    result = run_tiler("upscale", noisy_src, target, *options, preexec_fn=preexec)
    assert_one_error(result, 1, str(target), "writing the output failed", ignore=LIBTIFF_LINE)
    assert_no_output(target)

    # nothing computed was lost: the same run into a roomier folder only exports
    roomy = tmp_path / "out.tif"
    result = run_tiler("upscale", noisy_src, roomy, *options)
    assert result.returncode == 0, result.stderr
    assert "computed process 0/100 (resumed)" in _summary(result)
    with rasterio.open(roomy) as ds:
        assert (ds.width, ds.height, ds.count) == (1280, 1280, 3)


@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_disk_full_while_exporting_is_one_line_that_says_so(noisy_src, small_disk, tmp_path, fmt):
    """One error line (libtiff's own I/O lines are not printed without -v) names the output and,
    on a full file system, says "no space left on device" and where."""
    folder, preexec, reason = small_disk
    target = folder / "out.tif"
    options = ("--region", 32, "--workdir", tmp_path / "workdir", "--format", fmt)
    result = run_tiler("upscale", noisy_src, target, *options, preexec_fn=preexec)
    line = assert_one_error(
        result, 1, str(target), "writing the output failed", ignore=LIBTIFF_LINE
    )
    if reason == "No space left on device":
        assert f"no space left on device ({folder})" in line
