"""Tasks: what turns a region of the input into a region of the output.

Each task module gives the stages of a plan, their unit grids and the workdir arrays
(``stages``, ``unit_shapes``, ``unit_names``, ``array_specs``, ``MODEL_STAGES``), and a task class
whose methods run one unit of a stage. ``build_task`` makes that object for a plan, in the process
that runs the units (this one, or a Dask worker).
"""

from __future__ import annotations

from types import ModuleType


def task_module(plan) -> ModuleType:
    from . import classical, inpaint, superres, synthesis

    if plan.task == "inpaint":
        return inpaint
    if plan.task == "synthesize":
        return synthesis
    return classical if plan.is_classical else superres


def build_task(plan, store, reader, model=None, batch_size: int | None = None):
    """The task object running ``plan``'s units; ``model`` is a loaded ``superres.ModelRunner``
    for LDM plans."""
    from . import classical, inpaint, superres, synthesis

    if plan.task == "inpaint":
        return inpaint.InpaintTask(plan, store, reader, model, batch_size)
    if plan.task == "synthesize":
        return synthesis.SynthesisTask(plan, store, reader, model, batch_size)
    if plan.is_classical:
        return classical.ClassicalUpscaleTask(plan, store, reader)
    return superres.SuperResolutionTask(plan, store, reader, model, batch_size)
