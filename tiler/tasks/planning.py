"""What planning every task shares: the grid sizes, checked, and the output: its name, format and
creation options."""

from __future__ import annotations

from pathlib import Path

from tiler.errors import BadParameter
from tiler.raster.formats import check_creation_options, creation_options, format_for
from tiler.raster.sources import RasterInfo, is_virtual
from tiler.workdir.plan import Plan, build_plan

OUTPUT_SUFFIX = {"GTiff": ".tif", "COG": ".tif", "Zarr": ".zarr"}


def default_output(input_path: Path, tag: str, fmt: str | None) -> Path:
    """INPUT-STEM_TAG.tif (or .zarr) beside the input: ``x4``, ``filled``, ``synth``; for a URL
    or other remote input, in the current folder."""
    name = f"{Path(str(input_path)).stem}_{tag}{OUTPUT_SUFFIX[fmt or 'GTiff']}"
    if is_virtual(input_path):
        return Path.cwd() / name
    return Path(input_path).with_name(name)


def grid_sizes(
    defaults: dict, tile: int | None, overlap: int | None, region: int | None, halo: int | None
) -> dict[str, int]:
    """The tile, overlap, region and halo sizes (None = the task's default), checked."""
    given = dict(tile=tile, overlap=overlap, region=region, halo=halo)
    sizes = {name: defaults[name] if value is None else value for name, value in given.items()}
    if sizes["tile"] < 1:
        raise BadParameter("tile", f"{sizes['tile']} is too small; expected a tile of >= 1 px")
    if not 0 <= sizes["overlap"] < sizes["tile"]:
        raise BadParameter(
            "overlap",
            f"{sizes['overlap']} is out of range; expected "
            f"0..{sizes['tile'] - 1} (less than the tile, {sizes['tile']})",
        )
    if sizes["region"] < 1:
        raise BadParameter("region", f"{sizes['region']} is too small; expected >= 1 px")
    if sizes["halo"] < 0:
        raise BadParameter("halo", f"{sizes['halo']} is negative; expected >= 0 px")
    return sizes


def plan_with_output(
    info: RasterInfo,
    input_path,
    output_path,
    *,
    tag: str,
    output_format: str | None,
    creation_overrides: dict[str, str] | None,
    **fields,
) -> Plan:
    """``build_plan`` with the output worked out: OUTPUT as given, or INPUT-STEM_TAG beside the
    input; its format from ``--format`` or the extension; GDAL creation options with tiler's
    defaults and the ``--co`` overrides. ``fields``: the rest of the plan."""
    output = Path(output_path) if output_path else default_output(input_path, tag, output_format)
    fmt = format_for(output, output_format)
    options = creation_options(info.dtype, fmt, creation_overrides or {})
    check_creation_options(fmt, info.dtype, len(fields["bands"]), options, creation_overrides or {})
    return build_plan(info, output=output, output_format=fmt, creation_options=options, **fields)
