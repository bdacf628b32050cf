"""The Python API: tiler's commands as functions, for notebooks and scripts.

Keyword names are the CLI's option names with underscores (``--decode-halo`` is ``decode_halo``,
``--co`` is ``co``, ``-b/--bidx`` is ``bidx``, ``--range`` is ``range``); defaults are the CLI's.
Each run returns a :class:`Result`; bad values raise :class:`tiler.TilerError` subclasses with the
CLI's one-line messages (the option named plainly: ``decode_halo``, not ``--decode-halo``).

>>> import tiler
>>> result = tiler.upscale("scene.tif", model="bicubic", progress=False)   # doctest: +SKIP
>>> result.output, result.plan.output.width, result.seconds                # doctest: +SKIP

``upscale`` (and the other tasks) also take a georeferenced xarray DataArray (rioxarray's ``.rio``
accessor: CRS, transform, nodata) and return one, working through a temporary folder.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiler.errors import BadParameter
from tiler.execution.cluster import ExecutionOptions
from tiler.execution.run import RunReport, run_plan
from tiler.ldm.folders import DEFAULT_SR_MODEL
from tiler.ldm.options import DiffusionOptions, RuntimeOptions
from tiler.workdir.plan import Plan

# the API's names of options whose CLI destination differs (--bidx, --format, --co, --range)
_RENAMED = {
    "bidx": "bands",
    "format": "output_format",
    "co": "creation_options",
    "range": "value_range",
}


@dataclass(frozen=True)
class Result:
    """What a run made.

    Attributes
    ----------
    output : pathlib.Path
        The file or Zarr store written.
    plan : tiler.workdir.plan.Plan
        The run's plan (``plan.summary()`` is what ``tiler plan`` prints).
    seconds : float
        Wall time of the run.
    resumed : bool
        Whether it resumed a workdir left by an earlier, interrupted run.
    stages : dict
        Units computed per stage, as (computed, total).
    seam_index : dict or None
        The seam report's index per boundary kind (1.0 = invisible), when ``qa=True``.
    """

    output: Path
    plan: Plan
    seconds: float
    resumed: bool
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)
    seam_index: dict[str, float] | None = None


def upscale(
    input, output=None, *, model: str = DEFAULT_SR_MODEL, scale: int | None = None, **options
):
    """Upscale a raster (``tiler upscale``).

    Parameters
    ----------
    input : str, os.PathLike or xarray.DataArray
        A raster GDAL opens (a file, a Zarr output, a URL), or a georeferenced DataArray
        (band, y, x) that fits in memory; then a DataArray is returned.
    output : str or os.PathLike, optional
        The output file (``.tif``, ``.zarr``); default INPUT-STEM_x4.tif beside the input.
    model : str
        An LDM super-resolution model (hub id or folder), or ``nearest``, ``bicubic``,
        ``lanczos``.
    scale : int, optional
        The factor of a classical model (an LDM fixes its own).
    **options
        Any other ``tiler upscale`` option with underscores: ``bidx``, ``format``, ``co``,
        ``tile``, ``overlap``, ``region``, ``halo``, ``steps``, ``sampler``, ``seed``, ``device``,
        ``prompt``, ``guidance_scale``, ``workdir``, ``overwrite``, ``cluster``, ``workers``, ...;
        ``progress`` (default True) shows progress bars; ``qa=True`` measures the seam index.

    Returns
    -------
    Result or xarray.DataArray
    """
    from tiler.tasks import plan_upscale

    def make(input_path, output_path, keys):
        return plan_upscale(input_path, output_path, model=model, scale=scale, **_plan_keys(keys))

    return _task(make, input, output, options)


def inpaint(
    input,
    output=None,
    *,
    model: str,
    mask=None,
    mask_nodata: bool = False,
    mask_band: int | None = None,
    dilate: int = 0,
    **options,
):
    """Fill the masked area of a raster (``tiler inpaint``); every other px is kept bit for bit.

    Parameters
    ----------
    input : str, os.PathLike or xarray.DataArray
        The raster (or a georeferenced DataArray, returned filled).
    output : str or os.PathLike, optional
        Default INPUT-STEM_filled.tif.
    model : str
        An inpainting model folder (tiler's format) or a Stable Diffusion inpainting pipeline.
    mask, mask_nodata, mask_band, dilate
        Exactly one of: a mask raster (non-zero = fill), the input's nodata, a band of the input;
        ``dilate`` grows it by that many px.
    **options
        As for :func:`upscale`.

    Returns
    -------
    Result or xarray.DataArray
    """
    from tiler.raster.mask import choose_mask
    from tiler.tasks.inpaint import plan_inpaint

    spec = choose_mask(mask, mask_nodata, mask_band, dilate)

    def make(input_path, output_path, keys):
        return plan_inpaint(input_path, output_path, model=model, mask=spec, **_plan_keys(keys))

    return _task(make, input, output, options)


def synthesize(labels, output=None, *, model: str, classes=None, **options):
    """Turn a label raster into an RGB image (``tiler synthesize``).

    Parameters
    ----------
    labels : str or os.PathLike
        The label raster (class ids, or values mapped by ``classes``).
    output : str or os.PathLike, optional
        Default LABELS-STEM_synth.tif.
    model : str
        A semantic synthesis model folder (tiler's format).
    classes : str or os.PathLike, optional
        A YAML or JSON mapping of label values to the model's class ids.
    **options
        As for :func:`upscale` (no ``range``).

    Returns
    -------
    Result
    """
    from tiler.tasks.synthesis import plan_synthesize

    def make(input_path, output_path, keys):
        return plan_synthesize(
            input_path, output_path, model=model, classes_file=classes, **_plan_keys(keys)
        )

    return _task(make, labels, output, options)


def export(input, output=None, *, bidx=None, format=None, co=None, **options):
    """Copy a raster to another format through the engine (``tiler export``): a COG, a Zarr that
    xarray and GDAL read, a band selection; resumable, written as ``.partial`` then renamed.

    Returns
    -------
    Result
    """
    from tiler.tasks.classical import plan_export

    def make(input_path, output_path, keys):
        return plan_export(
            input_path,
            output_path,
            bands=_cli_value("bands", bidx),
            output_format=format,
            creation_overrides=_cli_value("creation_options", co) or {},
        )

    return _task(make, input, output, options)


def plan(input, output=None, *, task: str = "upscale", **options) -> Plan:
    """The plan a task would run (``tiler plan``), worked out without loading weights or writing.

    ``plan.summary()`` holds the sizes, tiles, regions, UNet evaluations and workdir estimate.

    Parameters
    ----------
    task : {"upscale", "inpaint", "synthesize", "export"}
    **options
        The task's keywords.
    """
    functions = {"upscale": upscale, "inpaint": inpaint, "synthesize": synthesize, "export": export}
    if task not in functions:
        raise BadParameter("task", f"{task!r}; expected one of {', '.join(functions)}")
    return functions[task](input, output, _plan_only=True, **options)


def qa(output, *, heatmap=None, overwrite: bool = False):
    """The seam report of an output (``tiler qa``): the mean step across tile, region and decode
    boundaries against lines between them (index 1.0 = invisible).

    Returns
    -------
    tiler.quality.seams.SeamReport
        ``.index``, ``.strength``, ``.remedies()``, ``.to_dict()``.
    """
    from tiler.errors import OutputError
    from tiler.quality.seams import seam_report

    if heatmap is not None and Path(heatmap).exists() and not overwrite:
        raise OutputError(f"{heatmap}: already exists; pass overwrite=True to replace it")
    return seam_report(output, heatmap_path=heatmap)


def run_workflow(
    path,
    *,
    dry_run: bool = False,
    overrides=(),
    overwrite: bool = False,
    fail_fast: bool = False,
    progress: bool = True,
):
    """Run a YAML workflow (``tiler run``) over its input files.

    Returns
    -------
    list
        One outcome per input file: ``.input``, ``.status`` and ``.steps`` (each with ``.output``,
        ``.status``, ``.plan`` and ``.error``).
    """
    from tiler.workflow import load_workflow
    from tiler.workflow.runner import WorkflowRunner, input_files

    workflow, source = load_workflow(path, overrides)
    runner = WorkflowRunner(workflow, source, overwrite=overwrite, progress=progress)
    return runner.run(input_files(workflow, source), dry_run=dry_run, fail_fast=fail_fast)


# --- shared --------------------------------------------------------------------------------------
def _plan_keys(keys: Mapping[str, Any]) -> dict:
    """The planning keywords of the task functions from the CLI's parameter names."""
    names = ("bands", "output_format", "tile", "overlap", "region", "halo")
    planned = {name: keys.get(name) for name in names}
    planned["creation_overrides"] = keys.get("creation_options") or {}
    planned["diffusion"] = DiffusionOptions.from_keys(keys)
    return planned


# where a run happens and how it shows (RuntimeOptions' fields: how the model runs)
_RUN_KEYS = {
    "workdir",
    "keep_workdir",
    "overwrite",
    "cluster",
    "scheduler",
    "workers",
    "retries",
    "progress",
    "qa",
} | {option.name for option in dataclasses.fields(RuntimeOptions)}


def _task(make, input, output, options: dict):
    """Plan with ``make(input, output, keys)``, then run (or return the plan: ``_plan_only``);
    a DataArray input goes through a temporary GeoTIFF and comes back as a DataArray."""
    plan_only = options.pop("_plan_only", False)
    keys = {_RENAMED.get(name, name): value for name, value in options.items()}
    keys = {name: _cli_value(name, value) for name, value in keys.items()}
    _check_names(keys)
    if _is_dataarray(input):
        return _through_files(make, input, output, keys, plan_only)
    planned = make(input, output, keys)
    return planned if plan_only else _run(planned, keys)


def _cli_value(name: str, value):
    """Lists as the CLI spells them: ``bidx=[3, 2, 1]`` is "3,2,1", ``range=(0, 3000)`` "0,3000";
    ``co`` a mapping or the CLI's list of NAME=VALUE."""
    if name == "creation_options" and isinstance(value, (list, tuple)):
        pairs = [str(item).partition("=") for item in value]
        return {key.strip().upper(): option.strip() for key, _, option in pairs}
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return value


def _check_names(keys: dict):
    known = _RUN_KEYS | _CLI_KEYS
    unknown = sorted(set(keys) - known)
    if unknown:
        shown = {value: key for key, value in _RENAMED.items()}
        raise BadParameter(
            shown.get(unknown[0], unknown[0]),
            "not an option of this task; expected the CLI's option names with underscores "
            "(e.g. decode_halo for --decode-halo)",
        )


# the keys a task function passes on to planning: the grid, the output, DiffusionOptions' fields
_CLI_KEYS = {
    "bands",
    "output_format",
    "creation_options",
    "tile",
    "overlap",
    "region",
    "halo",
} | {option.name for option in dataclasses.fields(DiffusionOptions)}


def _run(planned: Plan, keys: dict) -> Result:
    execution = ExecutionOptions.from_config(
        **{key: keys.get(key) for key in ("cluster", "scheduler", "workers", "retries")}
    )
    report: RunReport = run_plan(
        planned,
        workdir=Path(keys["workdir"]) if keys.get("workdir") else None,
        overwrite=bool(keys.get("overwrite")),
        keep_workdir=bool(keys.get("keep_workdir")),
        progress=keys.get("progress", True),
        runtime=RuntimeOptions.from_keys(keys),
        execution=execution,
    )
    seams = None
    if keys.get("qa"):
        from tiler.quality.seams import seam_report

        seams = seam_report(report.output, planned).index
    return Result(
        output=Path(report.output),
        plan=planned,
        seconds=report.seconds,
        resumed=report.resumed,
        stages={stage.name: (stage.computed, stage.total) for stage in report.stages},
        seam_index=seams,
    )


def _is_dataarray(value) -> bool:
    return type(value).__name__ == "DataArray" and hasattr(value, "dims")


def _through_files(make, array, output, keys: dict, plan_only: bool):
    """Run on an in-memory DataArray: written to a temporary GeoTIFF (its CRS, transform and
    nodata through rioxarray), run, read back into memory. For arrays that fit in memory."""
    import rioxarray  # noqa: F401 (registers .rio)

    if output is not None:
        raise BadParameter(
            "output",
            f"{output}: a DataArray input returns a DataArray; save it with .rio.to_raster() or "
            "pass a file as input",
        )
    if array.ndim == 2:
        array = array.expand_dims("band")
    with tempfile.TemporaryDirectory(prefix="tiler-") as folder:
        source = Path(folder) / "input.tif"
        array.rio.to_raster(source, tiled=True, blockxsize=256, blockysize=256)
        planned = make(str(source), Path(folder) / "output.tif", keys)
        if plan_only:
            return planned
        _run(planned, keys | {"workdir": None})
        return _read_back(Path(folder) / "output.tif", array)


def _read_back(path: Path, like):
    import rioxarray

    with rioxarray.open_rasterio(path) as opened:
        result = opened.load()
    result.name = like.name
    result.attrs = {**like.attrs, **{k: v for k, v in result.attrs.items() if k == "_FillValue"}}
    return result


__all__ = ["Result", "upscale", "inpaint", "synthesize", "export", "plan", "qa", "run_workflow"]
