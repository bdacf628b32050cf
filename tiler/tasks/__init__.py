"""Tasks: what turns a region of the input into a region of the output.

Each task module gives the stages of a plan, their unit grids and the workdir arrays
(``stages``, ``unit_shapes``, ``unit_names``, ``array_specs``, ``MODEL_STAGES``), and a task class
(``TASK`` in the LDM task modules) whose methods run one unit of a stage. ``build_task`` makes that
object for a plan, in the process that runs the units (this one, or a Dask worker).
"""

from __future__ import annotations

from types import ModuleType


def task_module(plan) -> ModuleType:
    from . import classical, inpaint, superres, synthesis

    if plan.is_classical:
        return classical
    return {"inpaint": inpaint, "synthesize": synthesis}.get(plan.task, superres)


def build_task(plan, store, reader, model=None, batch_size: int | None = None):
    """The task object running ``plan``'s units; ``model`` is a loaded ``superres.ModelRunner``
    for LDM plans."""
    module = task_module(plan)
    if plan.is_classical:
        return module.ClassicalUpscaleTask(plan, store, reader)
    return module.TASK(plan, store, reader, model, batch_size)
