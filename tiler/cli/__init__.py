"""The ``tiler`` command: thin Click commands over the library."""

import os

import click

# GDAL's block cache defaults to 5% of RAM; tiler reads and writes block by block, so a bounded
# cache
# keeps peak memory flat whatever the machine (the user's GDAL_CACHEMAX, in MB, wins).
os.environ.setdefault("GDAL_CACHEMAX", "256")

from tiler import __version__
from tiler.cli.convert import convert_command
from tiler.cli.export import export_command
from tiler.cli.inpaint import inpaint_command
from tiler.cli.plan import plan_command
from tiler.cli.qa import qa_command
from tiler.cli.run import run_command
from tiler.cli.synthesize import synthesize_command
from tiler.cli.train import train_command
from tiler.cli.upscale import upscale_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tiler")
def main():
    """Run Latent Diffusion Model tasks on rasters of any size, seamlessly."""


main.add_command(upscale_command)
main.add_command(plan_command)
main.add_command(qa_command)
main.add_command(export_command)
main.add_command(run_command)
main.add_command(inpaint_command)
main.add_command(synthesize_command)
main.add_command(convert_command)
main.add_command(train_command)
