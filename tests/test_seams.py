"""Fused lockstep sampling leaves weaker tile seams than the naive approach peers use.

The baseline (``benchmarks/seam_baseline.py``) denoises every tile alone with its own scheduler,
decodes it alone and feathers the decoded pixels; tiler fuses the tiles' noise predictions on one
canvas, steps once and decodes the blended latent. Same tiny model, input, seed, tile and overlap;
the seam strength |ln seam index| on the tile boundaries (``tiler.quality``) is compared.

What the margin measures, with a tiny random model (see the benchmark's third row): the baseline's
seams come mostly from decoding each tile alone (the decoder's edge effects at every tile edge), not
from the independent sampling itself. tiler decodes with a halo reflected past the raster's edges
(``decode_halo``), so the decoder's edge effects do not land on the report's reference lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import make_raster

from tiler.quality.seams import seam_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from seam_baseline import (  # noqa: E402
    independent_tiles_feathered,
    synthetic_image,
    tile_seams,
    tiler_fused,
)

GEOMETRY = dict(tile=16, overlap=4, steps=3)  # latent (= input) px; stride 12


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("width, height, seed", [(48, 48, 0), (48, 48, 1), (40, 56, 2)])
def test_fused_sampling_has_weaker_tile_seams_than_independent_feathered_tiles(
    tmp_path, tiny_model, width, height, seed
):
    src = make_raster(tmp_path / "in.tif", data=synthetic_image(width, height, seed=width))
    # one region and one decode tile covering the raster: only tile boundaries are inside it
    # (workers=2 keeps tiler at one torch thread per worker on CPU)
    tiler_fused(
        src, tmp_path / "tiler.tif", tiny_model, seed=seed, decode_halo=8, workers=2, **GEOMETRY
    )
    independent_tiles_feathered(src, tmp_path / "baseline.tif", tiny_model, seed=seed, **GEOMETRY)
    fused_index, fused, report = tile_seams(tmp_path / "tiler.tif")
    baseline_index, baseline, baseline_report = tile_seams(tmp_path / "baseline.tif")
    print(
        f"{width}x{height} seed {seed}: fused index {fused_index:.3f} (strength {fused:.3f}), "
        f"baseline index {baseline_index:.3f} (strength {baseline:.3f})"
    )
    # both reports measured the same tile boundaries (from the TILER_PLAN each output carries)
    assert report.boundaries["tile"] == baseline_report.boundaries["tile"] > 0
    assert report.boundaries["region"] == baseline_report.boundaries["region"] == 0
    # measured over seeds, sizes and two model seeds: fused <= 0.05, baseline >= 0.45 (about 3x
    # steps at its boundaries with this model)
    assert fused < baseline
    assert fused < 0.15 < 0.3 < baseline
    assert fused < 0.25 * baseline


def test_decode_seams_show_without_a_decode_halo_and_fade_with_the_default(tmp_path, tiny_model):
    """The seam report's decode kind: windows decoded alone (halo 0) leave steps where their cores
    meet; the default decode halo hides them (tiny random model: index about 3.7 vs 0.95 to 1.0)."""
    from tiler.ldm.options import DEFAULTS

    src = make_raster(tmp_path / "in.tif", data=synthetic_image(88, 80, seed=7))
    strengths = {}
    for halo in (0, DEFAULTS["decode_halo"]):
        out = tmp_path / f"halo{halo}.tif"
        # decode tiles of 22 latent px: lines at 22, 44, 66 (88 is also a tile line)
        tiler_fused(
            src, out, tiny_model, seed=0, decode_tile=22, decode_halo=halo, workers=2, **GEOMETRY
        )
        report = seam_report(out)
        assert report.boundaries["decode"] == 6 and report.geometry.decode_tile == 22
        strengths[halo] = report.strength["decode"]
        print(f"decode halo {halo}: index {report.index}")
    assert strengths[0] > 1.0  # index above e
    assert strengths[DEFAULTS["decode_halo"]] < 0.1
