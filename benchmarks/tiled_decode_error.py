#!/usr/bin/env python
"""Tiled first-stage decode (tiler.decode) against one whole-canvas decode, per decode halo, for a
first stage without attention (the inpainting VQ layout) or with it (the SR VQ).

    python benchmarks/tiled_decode_error.py                       # tiny inpainting-layout VQ, CPU
    python benchmarks/tiled_decode_error.py --attention           # with mid-block attention

Without attention a decoder is still not local: its GroupNorms take statistics per window, so the
error falls with the halo but does not reach float rounding. Prints mean and max |error| (in the
decoder's [-1, 1] units) over the interior (one tile away from the canvas edge, where reflection
differs from the whole decode's zero padding).
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
    parser.add_argument("--halos", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    parser.add_argument("--attention", action="store_true")
    args = parser.parse_args()

    import torch
    from diffusers import VQModel

    from tiler.decode import decode_chunk
    from tiler.grid import Box, Span
    from tiler.raster import read_reflected
    from tiny_models import save_tiny_ldm

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_ldm(Path(tmp) / "model", "inpaint", {"kind": "masked-image-and-mask"}, 4,
                               attention=args.attention)
        vq = VQModel.from_pretrained(folder / "vqvae").eval()
    latent = torch.randn(1, vq.config.latent_channels, args.latent, args.latent,
                         generator=torch.Generator().manual_seed(1))
    factor = 2 ** (len(vq.config.block_out_channels) - 1)

    def decode(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return vq.decode(torch.from_numpy(batch), force_not_quantize=True).sample.numpy()

    whole = decode(latent.numpy())[0]
    values = latent[0].numpy()
    size = args.latent
    interior = slice(args.tile * factor, (size - args.tile) * factor)
    print(f"{'halo':>4} {'mean |error|':>12} {'max |error|':>11}   (attention: {args.attention})")
    for halo in args.halos:
        tiled = decode_chunk(decode, lambda box: read_reflected(lambda r, c: values[:, r, c], box, size, size),
                             Box(Span(0, size), Span(0, size)), args.tile, halo, factor,
                             whole.shape[0], batch_size=4)
        error = np.abs(tiled - whole)[:, interior, interior]
        print(f"{halo:4d} {error.mean():12.4f} {error.max():11.4f}")


if __name__ == "__main__":
    main()
