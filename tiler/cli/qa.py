import json
from pathlib import Path

import click

from tiler.cli.errors import reports_errors
from tiler.cli.options import verbosity


def _number(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_report(report, as_json: bool):
    data = report.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    g = data["geometry"]
    region = f", region {g['region']}" if g["region"] else ""
    decode = f", decode tile {g['decode_tile']}" if g["decode_tile"] else ""
    click.echo(
        f"{data['path']}: {report.width} x {report.height} px; tile {g['tile']}, overlap "
        f"{g['overlap']}{region}{decode} latent px, scale {g['scale']}"
    )
    kinds = ("tile", "region", "decode", "all") if g["decode_tile"] else ("tile", "region", "all")
    rows = {"seam index": ("index", 3), "strength": ("strength", 4)}
    for label, (key, digits) in rows.items():
        values = "  ".join(f"{kind} {_number(data[key][kind], digits)}" for kind in kinds)
        click.echo(f"{label:<11} {values}")
    click.echo(
        f"{'boundaries':<11} "
        + "  ".join(f"{kind} {data['boundaries'][kind]}" for kind in kinds)
        + f"  ({data['segments']} segments)"
    )
    click.echo(
        "index: 1 = invisible, > 1 = steps at boundaries, < 1 = blurred bands; "
        "strength = |log index|, 0 = invisible"
    )
    if report.worst_segments:
        click.echo("worst segments (ratio, boundary, output px):")
        for segment in report.worst_segments:
            where = (
                f"x {segment.x0}, y {segment.y0}..{segment.y1}"
                if segment.orientation == "vertical"
                else f"y {segment.y0}, x {segment.x0}..{segment.x1}"
            )
            click.echo(
                f"  {_number(_finite(segment.ratio))}  {'+'.join(segment.kinds)} "
                f"{segment.orientation}, {where}"
            )
    for remedy in data["remedies"]:
        click.echo(f"hint: {remedy}")
    if report.heatmap:
        click.echo(f"{'heat map':<11} {report.heatmap}")


def _finite(value):
    return value if value == value and abs(value) != float("inf") else None


@click.command("qa")
@click.argument("output_path", metavar="OUTPUT", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--heatmap",
    type=click.Path(dir_okay=False),
    help="Heat map PNG of the boundary segments [OUTPUT.seams.png].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing heat map.")
@click.option(
    "--tile",
    type=click.IntRange(min=1),
    help="Rasters not written by tiler: tile size in latent px.",
)
@click.option("--overlap", type=click.IntRange(min=0), help="... tile overlap in latent px [0].")
@click.option("--region", type=click.IntRange(min=1), help="... region size in latent px [none].")
@click.option("--scale", type=click.IntRange(min=1), help="... output px per latent px.")
@click.option(
    "--decode-tile", type=click.IntRange(min=1), help="... decode tile size in latent px [none]."
)
@verbosity
@reports_errors
def qa_command(
    output_path,
    as_json,
    heatmap,
    overwrite,
    tile,
    overlap,
    region,
    scale,
    decode_tile,
    verbose,
    quiet,
):
    """Measure the seams at tile, region and decode boundaries of OUTPUT (a tiler GeoTIFF, COG or
    Zarr)."""
    from tiler.errors import BadParameter, OutputError
    from tiler.execution.safety import same_file
    from tiler.quality.seams import SeamGeometry, seam_report
    from tiler.raster.formats import check_output_folder

    geometry = None
    if any(value is not None for value in (tile, overlap, region, scale, decode_tile)):
        if tile is None or scale is None:
            raise BadParameter(
                "tile/scale",
                "describing the geometry by hand needs both --tile "
                "and --scale (and optionally --overlap, --region, --decode-tile)",
            )
        if (overlap or 0) >= tile:
            raise BadParameter(
                "overlap",
                f"{overlap} is out of range; expected 0..{tile - 1} (less than the tile, {tile})",
            )
        geometry = SeamGeometry(
            tile=tile, overlap=overlap or 0, scale=scale, region=region, decode_tile=decode_tile
        )
    heatmap = Path(heatmap) if heatmap else Path(str(Path(output_path)) + ".seams.png")
    if same_file(heatmap, output_path):
        raise OutputError(
            f"{heatmap}: is the raster being measured; tiler never writes over a file it reads, "
            "even with --overwrite: choose another --heatmap"
        )
    if heatmap.suffix.lower() != ".png":
        raise BadParameter("heatmap", f"{heatmap}: the heat map is a PNG; expected a .png path")
    check_output_folder(heatmap.absolute())
    if heatmap.exists() and not overwrite:
        raise OutputError(f"{heatmap}: already exists; pass --overwrite to replace it")
    report = seam_report(output_path, plan=geometry, heatmap_path=heatmap)
    if not quiet:
        print_report(report, as_json)
