"""A property-based test (hypothesis) of tiler's promises under any option values: `tiler upscale`
and `tiler plan` with random values (valid, out of range, non-finite, malformed) exit 0, 1 or 2
only; a failure is one stderr line and never a traceback; after a usage error (exit 2) nothing is
under OUTPUT and no workdir exists; the input and other files are unchanged, and an existing
OUTPUT is replaced only with --overwrite."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from conftest import make_raster, run_tiler, shown_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=40).map(str),
    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "-inf", "1e308", "abc", "", "2.5"]),
)
OPTIONS = {
    "--model": st.sampled_from(["nearest", "bicubic", "lanczos", "gpt", "./nowhere", "a/b/c"]),
    "--scale": NUMBERS,
    "--tile": NUMBERS,
    "--overlap": NUMBERS,
    "--region": NUMBERS,
    "--halo": NUMBERS,
    "-b": st.sampled_from(["1", "3,2,1", "", "0", "4", "1,,2", "x"]),
    "--format": st.sampled_from(["GTiff", "COG", "Zarr", "bogus"]),
    "--co": st.sampled_from(["COMPRESS=ZSTD", "BOGUS=1", "COMPRESS=", "BLOCKXSIZE=7", "NOEQUALS"]),
    "--workers": NUMBERS,
}
CHOICES = st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({key: OPTIONS[key] for key in keys})
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@settings(
    max_examples=60,
    derandomize=True,  # the same examples on every CI run; raise max_examples to explore
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    command=st.sampled_from(["upscale", "plan"]),
    options=CHOICES,
    output_exists=st.booleans(),
    overwrite=st.booleans(),
)
def test_any_option_values_keep_the_promises(command, options, output_exists, overwrite):
    folder = Path(tempfile.mkdtemp(prefix="tiler-random-"))
    try:
        src = make_raster(folder / "in.tif", width=24, height=16, dtype="uint8")
        out = folder / ("out.zarr" if options.get("--format") == "Zarr" else "out.tif")
        if output_exists:
            out.write_bytes(b"an earlier output\n") if out.suffix == ".tif" else out.mkdir()
        before = {p.name: digest(p) for p in folder.iterdir() if p.is_file()}
        args = [arg for key, value in options.items() for arg in (key, value)]
        args += ["--overwrite"] if overwrite and command == "upscale" else []
        result = run_tiler(command, src, out, *args, "-q")
        assert result.returncode in (0, 1, 2), result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode:
            assert len(shown_lines(result.stderr)) == 1, result.stderr
        if result.returncode == 2:
            assert not Path(f"{out}.tiler").exists() and not Path(f"{out}.partial").exists()
            assert out.exists() == output_exists
        replaced = command == "upscale" and result.returncode == 0 and overwrite
        for name, was in before.items():
            if name == out.name and replaced:
                continue
            assert digest(folder / name) == was, f"{name} changed: {result.stderr}"
    finally:
        shutil.rmtree(folder)
