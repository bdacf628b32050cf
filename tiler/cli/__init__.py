"""The ``tiler`` command: thin Click commands over the library."""

import os
import sys

import click

# GDAL's block cache defaults to 5% of RAM; tiler reads and writes block by block, so a bounded
# cache keeps peak memory flat whatever the machine (the user's GDAL_CACHEMAX, in MB, wins).
os.environ.setdefault("GDAL_CACHEMAX", "256")
# GDAL's default error handler prints what no handler took (libtiff's I/O errors from GDAL's
# compression threads: "_tiffWriteProc: No space left on device", several per failure) straight
# to stderr; tiler reports the failure itself, in one line. -v (or the user's CPL_LOG) keeps them.
if not {"-v", "--verbose"} & set(sys.argv):
    os.environ.setdefault("CPL_LOG", os.devnull)

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


class OneLineErrors(click.Group):
    """Click's own usage errors (a missing argument, an option out of range, an unknown option)
    in tiler's one-line form, ``tiler: error: ...``, exit 2, as every other error."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            code = super().main(args, prog_name or "tiler", standalone_mode=False, **extra)
        except click.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # bare `tiler`: the help, as click does
                click.echo(error.ctx.get_help())
                sys.exit(error.exit_code)
            where = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
            click.echo(f"tiler: error: {error.format_message()}{where}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"tiler: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:  # Ctrl-C while click reads arguments or prompts
            click.echo("tiler: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
