"""How much memory one unit of work needs, estimated from the plan before any work, so that an
absurd size (``--tile 1000000000``, ``--decode-tile 100000``, ``--dilate 1000000``) is refused
with the estimate and the machine's memory instead of being killed by the kernel hours later.

The estimates count the arrays the engine allocates per unit and the activations of the model's
widest layer; they are lower bounds of the real peak (a UNet keeps a few more activations), meant
to catch sizes that cannot fit, not to tune a run."""

from __future__ import annotations

import os

from tiler.errors import BadParameter
from tiler.ldm.options import BATCH_SIZES
from tiler.workdir.plan import Plan

FLOAT32 = 4
# activations alive at once in a UNet or first-stage pass, in units of its largest one: the input
# and output of a block, the skip connections of a level (a rough count)
LIVE_ACTIVATIONS = 4


def machine_memory() -> int:
    """Physical memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def widths(folder) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The channels per level (level i at 1/2^i of the input's resolution) of a model folder's UNet
    and first stage."""
    return (
        tuple(folder.unet["block_out_channels"]),
        tuple(folder.first_stage["block_out_channels"]),
    )


def largest_activation(levels: tuple[int, ...], side: int) -> int:
    """Values in the largest activation of a network with ``levels`` channels per level (halving
    the resolution each level) on a ``side`` x ``side`` input."""
    return max((channels * (side // 2**level) ** 2 for level, channels in enumerate(levels)),
               default=side**2)  # fmt: skip


def unit_memory(
    plan: Plan, unet: tuple[int, ...] = (), coder: tuple[int, ...] = (), dilate: int = 0
) -> dict[str, tuple[str, int]]:
    """Bytes one unit of each kind needs: {unit: (the option that sizes it, bytes)}.
    ``unet``, ``coder``: channels per level of the UNet and the first stage; ``dilate``: an
    inpainting mask's dilation radius (px)."""
    grid, out = plan.grid, plan.output
    side = grid.region + 2 * grid.halo
    if plan.diffusion is None:  # classical: a region's source and its blended output (float64)
        source = (side + 2 * plan.context) ** 2 * out.count * 8
        return {"region": ("region", source + 3 * (side * plan.scale) ** 2 * out.count * 8)}
    spec = plan.diffusion
    batch = BATCH_SIZES["cpu" if spec.dtype == "float32" else "cuda"]  # float32: a CPU run
    canvas = (
        side**2 * spec.latent_channels * FLOAT32 * 4
    )  # latent, noise, fused prediction, weights
    tiles = min(batch, (-(-side // (grid.tile - grid.overlap))) ** 2)  # the tiles of one call
    tiles *= spec.unet_passes  # classifier-free guidance: each tile with and without the prompt
    unet = tiles * largest_activation(unet, grid.tile) * FLOAT32 * LIVE_ACTIVATIONS
    window = (spec.decode_tile + 2 * spec.decode_halo) * plan.factor * plan.scale
    decode = batch * largest_activation(coder, window) * FLOAT32 * LIVE_ACTIVATIONS
    units = {
        "region canvas": ("region", canvas),
        "UNet tile batch": ("tile", unet),
        "first-stage window batch": ("decode_tile", decode),
    }
    if dilate:  # the disk and the mask block grown by it (tiler/raster/mask.py)
        disk = (2 * dilate + 1) ** 2 * (2 * 8 + 1)
        units["mask dilation"] = ("dilate", disk + (2048 + 2 * dilate) ** 2 * 2)
    return units


def check_memory(
    plan: Plan, unet: tuple[int, ...] = (), coder: tuple[int, ...] = (), dilate: int = 0
) -> None:
    """Refuse a plan one of whose units cannot fit in this machine's memory."""
    available = machine_memory()
    if not available:
        return
    for unit, (option, needed) in unit_memory(plan, unet, coder, dilate).items():
        if needed > available:
            raise BadParameter(
                option,
                f"one {unit} would need about {_size(needed)}; this machine has "
                f"{_size(available)} of memory: choose a smaller value",
            )


# the model-folder task of each command's LDM plans
FOLDER_TASKS = {"upscale": "superres", "inpaint": "inpaint", "synthesize": "synthesis"}


def largest_unit(plan: Plan) -> tuple[str, int]:
    """(unit, bytes) of the plan's largest unit of work (``tiler plan`` shows it)."""
    unet = coder = ()
    if plan.diffusion is not None:
        from tiler.ldm.folders import inspect_model

        folder = inspect_model(
            plan.diffusion.model_dir, FOLDER_TASKS[plan.command], allow_pickle=True
        )
        unet, coder = widths(folder)
    dilate = plan.mask.dilate if plan.mask is not None else 0
    units = unit_memory(plan, unet, coder, dilate)
    unit = max(units, key=lambda name: units[name][1])
    return unit, units[unit][1]


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return f"{count:.1f} PiB"
