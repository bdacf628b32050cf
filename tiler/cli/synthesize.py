import click

from tiler.cli.options import RASTER, generative_options, output_options
from tiler.cli.running import diffusion_options, run_or_print


@click.command("synthesize")
@click.argument("input_path", metavar="LABELS", type=RASTER)
@click.argument("output_path", metavar="[OUTPUT]", required=False, type=click.Path())
@click.option(
    "--model",
    required=True,
    help="Semantic-synthesis model folder in tiler's format (tiler.yaml; see `tiler convert`).",
)
@click.option(
    "--classes",
    "classes_file",
    type=click.Path(dir_okay=False, exists=True),
    help="YAML or JSON mapping of LABELS values to the model's class ids (null = no "
    "class, left as nodata) [the values are class ids].",
)
@click.option("-b", "--bidx", "bands", metavar="N", help="The band of class ids [1].")
@generative_options(output_options()[1:], "VQ decode halo in latent px", ranged=False)
def synthesize_command(classes_file, verbose, **params):
    """Synthesize an RGB image from LABELS, a raster of class ids, into OUTPUT
    [LABELS-STEM_synth.tif], georeferenced like LABELS; re-running resumes."""
    from tiler.tasks.synthesis import plan_synthesize

    plan = plan_synthesize(
        params["input_path"],
        params["output_path"],
        model=params["model"],
        classes_file=classes_file,
        bands=params["bands"],
        output_format=params["output_format"],
        creation_overrides=params["creation_options"],
        **{key: params[key] for key in ("tile", "overlap", "region", "halo")},
        diffusion=diffusion_options(params),
    )
    run_or_print(plan, params)
