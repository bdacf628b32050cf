#!/usr/bin/env python
"""Tiled first-stage decode (tiler.ldm.first_stage) against one whole-canvas decode, per decode
halo, with each window's own GroupNorm statistics and with one shared set
(tiler/ldm/norm_stats.py), for a first stage without attention (the inpainting VQ layout) or
with it (the SR VQ).

    python benchmarks/tiled_decode_error.py                       # tiny inpainting-layout VQ, CPU
    python benchmarks/tiled_decode_error.py --real                # the real inpainting VQ (random
    weights)
    python benchmarks/tiled_decode_error.py --attention           # tiny, with mid-block attention
    python benchmarks/tiled_decode_error.py --x4-vae              # the x4 upscaler's KL VAE (real
    architecture, random weights; mid-block attention)

The whole canvas is decoded with the same reflection past its edges that the tiles see, so a local
decoder's tiled result can equal it everywhere. Prints mean and max |error| in the decoder's
[-1, 1] units: with shared statistics and no attention it reaches float rounding once the halo
covers the decoder's reach.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, default=64, help="canvas side in latent px")
    parser.add_argument("--tile", type=int, default=16, help="decode tile in latent px")
    parser.add_argument("--halos", type=int, nargs="+", default=[0, 2, 4, 8, 16, 24])
    parser.add_argument("--attention", action="store_true", help="tiny VQ with mid-block attention")
    parser.add_argument(
        "--real",
        action="store_true",
        help="the real inpainting VQ (benchmarks/configs/ldm-inpainting.json)",
    )
    parser.add_argument(
        "--x4-vae",
        action="store_true",
        help="the x4 upscaler's AutoencoderKL (benchmarks/configs/sd-x4-upscaler.json)",
    )
    args = parser.parse_args()

    import torch

    from tiler.geometry.grid import Box, Span
    from tiler.ldm import norm_stats
    from tiler.ldm.first_stage import tiled_pass
    from tiler.raster.sources import read_reflected

    torch.set_num_threads(2)
    vq = build_x4_vae() if args.x4_vae else build_vq(args.real, args.attention)
    norm_stats.install(vq.decoder)
    size, halo_max = args.latent, max(args.halos)
    latent = torch.randn(
        vq.config.latent_channels, size, size, generator=torch.Generator().manual_seed(1)
    ).numpy()
    factor = 2 ** (len(vq.config.block_out_channels) - 1)

    def read(box: Box) -> np.ndarray:
        return read_reflected(lambda r, c: latent[:, r, c], box, size, size)

    def decoder(norms):
        def decode(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad(), norm_stats.using(norms):
                return vq.decode(torch.from_numpy(batch)).sample.numpy()

        return decode

    recorder = norm_stats.Recorder(len(norm_stats.group_norms(vq.decoder)))
    side = min(size, 32)
    decoder(recorder)(
        np.stack(
            [
                read(Box(Span(y, y + side), Span(x, x + side)))
                for y, x in norm_stats.sample_boxes(size, size, side, 9)
            ]
        )
    )
    shared = recorder.as_array()
    outer = Box(Span(-halo_max, size + halo_max), Span(-halo_max, size + halo_max))
    crop = slice(halo_max * factor, (halo_max + size) * factor)
    whole = {
        name: decoder(norms)(read(outer)[None])[0][:, crop, crop]
        for name, norms in (("own", None), ("shared", shared))
    }
    name = "x4 upscaler KL VAE" if args.x4_vae else "real inpainting VQ" if args.real else "tiny"
    print(
        f"first stage: {name}, "
        f"attention: {args.attention or args.x4_vae}, "
        f"canvas {size} latent px, decode tile {args.tile}"
    )
    print(f"{'halo':>4} {'own stats: mean':>16} {'max':>9} {'shared stats: mean':>19} {'max':>9}")
    for halo in args.halos:
        row = []
        for name, norms in (("own", None), ("shared", shared)):
            tiled = tiled_pass(
                decoder(norms),
                read,
                Box(Span(0, size), Span(0, size)),
                args.tile,
                halo,
                factor,
                whole[name].shape[0],
                batch_size=4,
            )
            error = np.abs(tiled - whole[name])
            row += [error.mean(), error.max()]
        print(f"{halo:4d} {row[0]:16.2e} {row[1]:9.2e} {row[2]:19.2e} {row[3]:9.2e}")


def build_x4_vae():
    """The x4 upscaler's AutoencoderKL, random weights; its decoder takes the unscaled latent."""
    import json

    from diffusers import AutoencoderKL

    config = json.loads((REPO / "benchmarks" / "configs" / "sd-x4-upscaler.json").read_text())
    torch_seed(0)
    return AutoencoderKL(**{k: v for k, v in config["vae"].items() if not k.startswith("_")}).eval()


def torch_seed(seed: int):
    import torch

    torch.manual_seed(seed)


def build_vq(real: bool, attention: bool):
    import json

    from diffusers import VQModel

    if real:
        config = json.loads((REPO / "benchmarks" / "configs" / "ldm-inpainting.json").read_text())[
            "vqvae"
        ]
        return VQModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    from tiny_models import save_tiny_ldm

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_ldm(
            Path(tmp) / "model",
            "inpaint",
            {"kind": "masked-image-and-mask"},
            4,
            attention=attention,
        )
        return VQModel.from_pretrained(folder / "vqvae").eval()


if __name__ == "__main__":
    main()
