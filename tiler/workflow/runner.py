"""Running a workflow: every input file through every step, safe to run again.

1. Plan every (file, step) before anything runs, steps whose input is not made yet from what the
   step before will make: option errors surface before any GPU time is spent.
2. Per file, per step: a step is *up to date* when its output exists and carries (in its
   TILER_PLAN metadata) the very plan it would run now, input file identity (size, mtime)
   included; it is skipped. Otherwise it runs (resuming its workdir if a run was cut short). A
   changed option changes that step's plan; its new output changes the identity of the next step's
   input, and so on down the chain: exactly the affected steps run again.
3. A failing file is reported and the others go on (unless ``fail_fast``).

An output that exists but was not written by tiler is never replaced without ``overwrite``; one
that a previous run of this workflow wrote is the workflow's own and is replaced when out of date.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiler.errors import BadParameter, NotATilerOutput, TilerError, first_line
from tiler.execution.cluster import ExecutionOptions, choose_cluster, connect
from tiler.execution.export import written_by_tiler
from tiler.execution.run import run_plan
from tiler.execution.safety import file_identity
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.quality.outputs import load_plan
from tiler.raster.mask import choose_mask
from tiler.raster.sources import is_virtual
from tiler.tasks import plan_upscale
from tiler.tasks.classical import plan_export
from tiler.tasks.inpaint import plan_inpaint
from tiler.tasks.synthesis import plan_synthesize
from tiler.workdir.plan import Plan
from tiler.workflow.schema import SamplingKeys, Workflow
from tiler.workflow.source import Source, WorkflowError

# a library option's plain name (BadParameter.option) -> the step key, where it is not the name with
# dashes
OPTION_KEYS = {"bands": "bidx", "value_range": "range"}
FILE_KEYS = ("mask", "classes")  # step keys naming a file per input (templates, like output)


@dataclass
class StepOutcome:
    step: str
    output: str
    status: str  # "ran", "up to date", "would run", "failed"
    plan: Plan | None = None
    error: str | None = None


@dataclass
class FileOutcome:
    input: Path
    steps: list[StepOutcome] = field(default_factory=list)

    @property
    def status(self) -> str:
        statuses = {step.status for step in self.steps}
        if "failed" in statuses:
            return "failed"
        if statuses <= {"up to date"}:
            return "skipped"
        return "would run" if "would run" in statuses else "done"

    @property
    def error(self) -> str | None:
        return next((step.error for step in self.steps if step.error), None)


# --- inputs and outputs ---------------------------------------------------------------------------
class RemoteInput(str):
    """A workflow input GDAL opens remotely (a URL, a /vsi path), named like a file for the
    templates: ``stem``, ``name`` and ``parent`` (``input_dir``) from its last path segment."""

    @property
    def name(self) -> str:
        return self._segments()[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> str:
        return self._segments()[0]

    def _segments(self) -> list[str]:
        """(the address up to its last segment, the last segment), the query left out."""
        return self.split("?", 1)[0].rstrip("/").rsplit("/", 1)


def input_files(workflow: Workflow, source: Source) -> list[Path | RemoteInput]:
    """The input files, in order, each once: globs sorted, paths relative to the workflow file,
    URLs and GDAL virtual paths as given. A glob may match nothing (no PNG scans tonight); no input
    file at all is an error."""
    base = source.path.parent
    files = []
    for pattern in workflow.inputs:
        if is_virtual(pattern):
            files.append(RemoteInput(pattern))
            continue
        path = base / Path(pattern).expanduser()
        files += (
            sorted(map(Path, glob.glob(str(path), recursive=True)))
            if glob.has_magic(pattern)
            else [path]
        )
    if workflow.inputs_from:
        files += _listed_files(base / workflow.inputs_from, source)
    if not files:
        raise WorkflowError(
            f"{source.where(('inputs',))}: {workflow.inputs} match no file (relative to {base})"
        )
    return list(dict.fromkeys(_absolute(file) for file in files))


def _absolute(path):
    """Absolute, ``..`` folded (``workflows/../samples`` -> ``samples``), as the plans' paths; a
    remote input as given."""
    if isinstance(path, RemoteInput):
        return path
    return Path(os.path.abspath(path))


def _listed_files(path: Path, source: Source) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WorkflowError(
            f"{source.where(('inputs-from',))}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [
        RemoteInput(name) if is_virtual(name) else path.parent / Path(name).expanduser()
        for name in names
    ]


def local_models(workflow: Workflow, base: Path) -> Workflow:
    """Steps whose ``model`` names a folder relative to the workflow file get its absolute path;
    any other model (a kernel, a hub id, an absolute path, a folder relative to the current
    directory) stays as written."""
    steps = []
    for step in workflow.steps:
        if getattr(step, "uses_model", False):
            folder = base / Path(step.model).expanduser()
            if folder.is_dir():
                step = step.model_copy(update={"model": str(_absolute(folder))})
        steps.append(step)
    return workflow.model_copy(update={"steps": steps})


def output_path(template: str, input_file: Path, step: str, base: Path) -> Path:
    return _absolute(base / Path(fill_template(template, input_file, step)).expanduser())


def fill_template(template: str, input_file: Path, step: str) -> str:
    """A template (a path, a prompt) with the input file's fields filled in."""
    return template.format(
        stem=input_file.stem, name=input_file.name, input_dir=str(input_file.parent), step=step
    )


# --- planning -------------------------------------------------------------------------------------
def plan_step(step, input_file: Path, output: Path, info=None, files: dict | None = None) -> Plan:
    """The step's plan, as the CLI command of its task would make it. ``info``: the input's
    description when it is not made yet (then an LDM step on non-uint8 data assumes its dtype's
    range for the estimate; the real run reads the range from the file); ``files``: the step's
    own files (``mask``, ``classes``) resolved for this input."""

    if step.task == "export":
        return plan_export(
            input_file,
            output,
            bands=step.bidx,
            output_format=step.format,
            creation_overrides=step.co,
            info=info,
        )

    files = files or {}
    if step.task in ("inpaint", "synthesize") and info is not None:
        raise TilerError(
            f"a {step.task} step reads its input when planned: it can follow another "
            "step only once that step's output exists (run without --dry-run)"
        )
    value_range = step.range
    if info is not None and step.uses_model and value_range is None and info.dtype != "uint8":
        limits = (
            np.finfo(info.dtype)
            if np.issubdtype(np.dtype(info.dtype), np.floating)
            else np.iinfo(info.dtype)
        )
        value_range = f"{float(limits.min)},{float(limits.max)}"
    prompts = {  # templates, like the output
        key: fill_template(getattr(step, key), input_file, step.name)
        for key in ("prompt", "negative_prompt")
        if getattr(step, key, None) is not None
    }
    diffusion = DiffusionOptions.from_keys(dict(step) | {"value_range": value_range} | prompts)
    common = dict(  # the keys every LDM and upscale step shares, as the CLI passes them
        bands=step.bidx,
        output_format=step.format,
        creation_overrides=step.co,
        tile=step.tile,
        overlap=step.overlap,
        region=step.region,
        halo=step.halo,
        diffusion=diffusion,
    )
    if step.task == "inpaint":
        mask = choose_mask(files.get("mask"), step.mask_nodata, step.mask_band, step.dilate)
        return plan_inpaint(input_file, output, model=step.model, mask=mask, **common)
    if step.task == "synthesize":
        classes = files.get("classes")
        return plan_synthesize(input_file, output, model=step.model, classes_file=classes, **common)
    return plan_upscale(input_file, output, model=step.model, scale=step.scale, info=info, **common)


def product_identity(plan: Plan) -> str:
    """Everything an output depends on (the plan without the output's own path)."""
    return plan.model_dump_json(exclude={"output": {"path"}})


def stored_identity(output: Path) -> str | None:
    """The identity stored in an existing output; None if it was not written by tiler."""

    try:
        return product_identity(load_plan(output))
    except (NotATilerOutput, TilerError, OSError):
        return None


# --- running --------------------------------------------------------------------------------------
class WorkflowRunner:
    def __init__(
        self,
        workflow: Workflow,
        source: Source,
        *,
        overwrite: bool = False,
        progress: bool = False,
        say: Callable[[str], None] = lambda line: None,
    ):
        self.base = source.path.parent
        self.workflow = local_models(workflow, self.base)
        self.source = source
        self.overwrite = overwrite
        self.progress = progress
        self.say = say
        self._connection = contextlib.ExitStack()
        self._client = None
        self._connected = False

    def run(
        self, files: list[Path], dry_run: bool = False, fail_fast: bool = False
    ) -> list[FileOutcome]:
        own = self.own_outputs(files)
        if own:
            shown = ", ".join(file.name for file in own[:3]) + (" ..." if len(own) > 3 else "")
            self.say(
                f"skipping {len(own)} input file(s) this workflow wrote itself ({shown}): outputs "
                "are never taken as inputs"
            )
            files = [file for file in files if file not in own]
        outcomes = [self.plan_file(file) for file in files]
        self._check_distinct_outputs(outcomes)
        if dry_run:
            return outcomes
        with self._connection:
            for number, outcome in enumerate(outcomes, start=1):
                if outcome.status != "failed":
                    self.run_file(outcome, f"[{number}/{len(outcomes)}]")
                self.say(
                    f"[{number}/{len(outcomes)}] {outcome.input}: {outcome.status}"
                    + (f": {outcome.error}" if outcome.error else "")
                )
                if fail_fast and outcome.status == "failed":
                    break
        return outcomes

    # --- planning ahead -------------------------------------------------------------------------
    def plan_file(self, file: Path) -> FileOutcome:
        """Plan every step for ``file``; a step reading an output not made (or out of date) yet is
        planned from what that step will make."""
        outcome = FileOutcome(file)
        for index, step in enumerate(self.workflow.steps):
            output = output_path(step.output, file, step.name, self.base)
            upstream = self.workflow.source_of(index)
            try:
                if upstream is None:
                    plan = plan_step(step, file, output, files=self.step_files(step, file))
                else:
                    before = outcome.steps[upstream]
                    if before.status == "failed":
                        raise TilerError(f"needs the output of step {before.step}, which failed")
                    _check_readable(before, self.source, upstream)
                    made = before.status == "up to date"
                    plan = plan_step(
                        step,
                        Path(before.output),
                        output,
                        info=None if made else before.plan.output_info(),
                        files=self.step_files(step, file),
                    )
            except TilerError as exc:
                outcome.steps.append(
                    StepOutcome(step.name, str(output), "failed", error=self._explain(index, exc))
                )
                continue
            status = (
                "up to date" if stored_identity(output) == product_identity(plan) else "would run"
            )
            outcome.steps.append(StepOutcome(step.name, str(output), status, plan))
        return outcome

    def step_files(self, step, file: Path) -> dict[str, Path]:
        """A step's own files (an inpaint mask, a synthesis class mapping: templates) for the
        workflow input ``file``."""
        return {
            key: output_path(getattr(step, key), file, step.name, self.base)
            for key in FILE_KEYS
            if getattr(step, key, None)
        }

    def _explain(self, index: int, error: TilerError) -> str:
        """The error with the key path (and line) of the step option it is about."""
        step = self.workflow.steps[index]
        if isinstance(error, BadParameter):
            key = OPTION_KEYS.get(error.option, error.option.replace("_", "-"))
            return f"{self.source.where(('steps', index, key))}: {error.detail}"
        return f"step {step.name}: {first_line(error)}"

    def own_outputs(self, files: list[Path]) -> list[Path]:
        """The input files that are outputs of this workflow (an output template inside the inputs
        glob, run again from cron): at a path the workflow writes, with tiler's plan inside."""
        writes = {
            output_path(step.output, file, step.name, self.base)
            for file in files
            for step in self.workflow.steps
        }
        return [file for file in files if file in writes and written_by_tiler(file)]

    def _check_distinct_outputs(self, outcomes: list[FileOutcome]):
        """Two files (or steps) writing one output would overwrite each other; an output that is
        one of the workflow's input files would destroy it."""
        owners: dict[str, str] = {}
        inputs = {file_identity(outcome.input): outcome.input for outcome in outcomes}
        for outcome in outcomes:
            for index, step in enumerate(outcome.steps):
                if file_identity(step.output) in inputs:
                    raise WorkflowError(
                        f"{self.source.where(('steps', index, 'output'))}: {step.output} is "
                        f"{inputs[file_identity(step.output)]}, an input file of this workflow; "
                        "a step never writes over an input: change the output template"
                    )
                owner = f"{outcome.input.name} (step {step.step})"
                if step.output in owners:
                    raise WorkflowError(
                        f"{self.source.where(('steps', index, 'output'))}: {step.output} is the "
                        f"output of both {owners[step.output]} and {owner}; put {{stem}} in the "
                        "output template"
                    )
                owners[step.output] = owner

    # --- running --------------------------------------------------------------------------------
    def run_file(self, outcome: FileOutcome, label: str):
        for index in range(len(self.workflow.steps)):
            planned = outcome.steps[index]
            if planned.status == "failed":
                return
            try:
                self._run_step(outcome, index, label)
            except TilerError as exc:
                planned.status, planned.error = "failed", self._explain(index, exc)
                for later in outcome.steps[index + 1 :]:
                    if later.status != "failed":
                        later.status, later.error = "failed", f"not run: step {planned.step} failed"
                return

    def _run_step(self, outcome: FileOutcome, index: int, label: str):

        step = self.workflow.steps[index]
        planned = outcome.steps[index]
        upstream = self.workflow.source_of(index)
        input_file = outcome.input if upstream is None else Path(outcome.steps[upstream].output)
        plan = plan_step(
            step,
            input_file,
            Path(planned.output),  # the input exists now
            files=self.step_files(step, outcome.input),
        )
        output = Path(planned.output)
        stored = stored_identity(output) if output.exists() else None
        if stored == product_identity(plan):
            planned.status, planned.plan = "up to date", plan
            self.say(f"{label} {step.name}: {output} is up to date")
            return
        if output.exists() and stored is None and not self.overwrite:
            raise TilerError(
                f"{output}: exists and was not written by tiler; pass --overwrite to replace it"
            )
        self.say(f"{label} {step.name}: {input_file.name} -> {output}")
        workdir = (
            output_path(step.workdir, outcome.input, step.name, self.base) if step.workdir else None
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        run_plan(
            plan,
            workdir=workdir,
            overwrite=True,
            keep_workdir=step.keep_workdir,
            progress=self.progress,
            runtime=_runtime(step),
            execution=self.execution,
            client=self._cluster_client(),
        )
        planned.status, planned.plan = "ran", plan

    @property
    def execution(self):

        given = (
            self.workflow.cluster.model_dump(exclude_unset=True) if self.workflow.cluster else {}
        )
        return ExecutionOptions.from_config(**given)

    def _cluster_client(self):
        """One Dask connection for the whole workflow, made when the first step runs (None when
        the workflow runs in this process)."""

        if not self._connected:
            self._connected = True
            uses_gpu = any(
                getattr(step, "uses_model", False) and step.device != "cpu"
                for step in self.workflow.steps
            )
            kind = choose_cluster(self.execution, uses_gpu)
            if kind != "threads":
                self._client = self._connection.enter_context(
                    connect(kind, self.execution, uses_gpu, self.progress)
                )
        return self._client


def _check_readable(before: StepOutcome, source: Source, upstream: int):
    if before.plan is not None and before.plan.output.format == "Zarr":
        raise WorkflowError(
            f"{source.where(('steps', upstream, 'output'))}: a Zarr output cannot "
            "be read by a later step; write a GeoTIFF there (.tif) and export to "
            "Zarr last"
        )


def _runtime(step):

    return RuntimeOptions.from_keys(dict(step) if isinstance(step, SamplingKeys) else {})
