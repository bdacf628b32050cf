"""What every task is: its stages over a plan, declared once, and the object that runs one unit of
each stage (made in the process that runs the units: this one, or a Dask worker).

A task class declares, once, as class methods of the plan: its stages in order (``stages_of``),
the grid of units of each (``unit_shapes_of``), what a unit is called (``unit_names_of``, for
progress bars and errors) and the workdir arrays (``array_specs``); ``model_stages`` are the stages
that need the model (on a GPU where there is one). ``run_plan`` and the Dask executor read them
from the class; a task object holds their values for its plan (``stages``, ``unit_shapes``,
``unit_names``), which the thread executor reads.
"""

from __future__ import annotations

from typing import ClassVar

from tiler.raster.sources import SourceReader
from tiler.workdir.plan import Plan
from tiler.workdir.store import Workdir


class Task:
    model_stages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, plan: Plan, store: Workdir, reader: SourceReader):
        self.plan = plan
        self.store = store
        self.reader = reader
        self.grid = plan.tile_grid()
        self.stages = self.stages_of(plan)
        self.unit_shapes = self.unit_shapes_of(plan)
        self.unit_names = self.unit_names_of(plan)

    @classmethod
    def stages_of(cls, plan: Plan) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def unit_names_of(cls, plan: Plan) -> dict[str, str]:
        raise NotImplementedError

    @classmethod
    def unit_shapes_of(cls, plan: Plan) -> dict[str, tuple[int, int]]:
        raise NotImplementedError

    @classmethod
    def array_specs(cls, plan: Plan) -> dict[str, dict]:
        raise NotImplementedError
