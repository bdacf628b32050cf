"""Tasks: what turns the input into the output, one file per task (its planning on top, its task
class below), and the registry from a plan to its task class.

- classical.py: a classical kernel (nearest, bicubic, lanczos), and the 1x copy of ``tiler export``
- superres.py: LDM 4x super-resolution (``tiler upscale --model`` an LDM)
- inpaint.py, synthesis.py: LDM inpainting and semantic synthesis (tiler's model folders)
- ldm.py: the LDM stages and base class they share; base.py: what every task class declares;
  planning.py: grid sizes and output names
"""

from __future__ import annotations

from tiler.errors import BadParameter
from tiler.geometry.resample import KERNELS
from tiler.ldm.folders import DEFAULT_SR_MODEL
from tiler.ldm.options import DiffusionOptions
from tiler.raster.sources import RasterInfo, SourceReader, describe, parse_bands
from tiler.tasks.base import Task
from tiler.tasks.classical import ClassicalUpscaleTask, plan_classical
from tiler.tasks.inpaint import InpaintTask
from tiler.tasks.superres import SuperResolutionTask, plan_superres
from tiler.tasks.synthesis import SynthesisTask
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir

# the command that made an LDM plan (Plan.command) -> its task class
LDM_TASKS = {"upscale": SuperResolutionTask, "inpaint": InpaintTask, "synthesize": SynthesisTask}


def task_class(plan: Plan) -> type[Task]:
    return ClassicalUpscaleTask if plan.is_classical else LDM_TASKS[plan.command]


def build_task(
    plan: Plan, store: Workdir, reader: SourceReader, model=None, batch_size: int | None = None
) -> Task:
    """The task object running ``plan``'s units; ``model``: a loaded ``ModelRunner`` for LDM
    plans."""
    return task_class(plan)(plan, store, reader, model, batch_size)


def stages(plan: Plan) -> tuple[str, ...]:
    return task_class(plan).stages_of(plan)


def array_specs(plan: Plan) -> dict[str, dict]:
    return task_class(plan).array_specs(plan)


def plan_upscale(
    input_path,
    output_path=None,
    *,
    model: str = DEFAULT_SR_MODEL,
    scale: int | None = None,
    bands: str | None = None,
    output_format: str | None = None,
    creation_overrides: dict[str, str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    region: int | None = None,
    halo: int | None = None,
    chunk: int | None = None,
    diffusion: DiffusionOptions | None = None,
    info: RasterInfo | None = None,
) -> Plan:
    """The plan of ``tiler upscale``: a classical kernel or an LDM, worked out without touching any
    output or loading model weights. ``info``: the input's description when it is not made yet (a
    workflow step planned ahead of the step that makes it)."""
    info = info or describe(input_path)
    band_list = parse_bands(bands, info)
    grid = dict(tile=tile, overlap=overlap, region=region, halo=halo)
    if model in KERNELS:
        _refuse_text_options(model, diffusion)
        return plan_classical(
            info,
            input_path,
            output_path,
            kernel=model,
            bands=band_list,
            scale=scale,
            output_format=output_format,
            creation_overrides=creation_overrides,
            grid=grid,
        )
    return plan_superres(
        info,
        input_path,
        output_path,
        model=model,
        bands=band_list,
        scale=scale,
        output_format=output_format,
        creation_overrides=creation_overrides,
        grid=grid,
        chunk=chunk,
        diffusion=diffusion or DiffusionOptions(),
    )


def _refuse_text_options(kernel: str, diffusion: DiffusionOptions | None):
    """A classical kernel takes no prompt, guidance or noise level (text-conditioned models do)."""
    for key in ("prompt", "negative_prompt", "guidance_scale", "noise_level"):
        value = getattr(diffusion, key, None) if diffusion else None
        if value is not None:
            raise BadParameter(
                key,
                f"{value!r}: the classical model {kernel} takes none; expected a "
                "text-conditioned LDM (a StableDiffusionUpscalePipeline) with --model",
            )
