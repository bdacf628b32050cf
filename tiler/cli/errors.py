"""The one place where errors become exit codes: one line on stderr, tracebacks only with -v."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading

import click

from tiler.errors import BadParameter, TilerError


def reports_errors(command):
    """Turn library errors into one line on stderr and the exit code they carry."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        _log_to_stderr(verbose)
        signal.signal(signal.SIGTERM, _stop_requested)
        # Ctrl-C raises KeyboardInterrupt even where the shell started us with SIGINT ignored
        # (a background job of a script): stopping on request is the promise
        signal.signal(signal.SIGINT, _stop_requested)
        try:
            return command(*args, **kwargs)
        except TilerError as exc:
            _fail(cli_message(exc), exc.exit_code, verbose)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", 1, verbose)
        except KeyboardInterrupt:
            _stop("interrupted; run the same command again to resume", 130, verbose)
        except Terminated:
            _stop("terminated; run the same command again to resume", 143, verbose)
        except Exception as exc:  # a bug: say so on one line; -v shows the traceback
            _fail(
                f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)",
                1,
                verbose,
            )

    return wrapper


# how the CLI spells the options whose plain name (BadParameter.option) is not their flag's
SPELLING = {"bands": "-b/--bidx", "output": "OUTPUT", "value_range": "--range"}


def spelled(option: str) -> str:
    """The CLI's name of a library option: ``tile`` -> ``--tile``, ``steps/minutes`` ->
    ``--steps/--minutes``, ``bands`` -> ``-b/--bidx``."""
    return SPELLING.get(option) or "/".join(
        f"--{part.replace('_', '-')}" for part in option.split("/")
    )


def cli_message(error: TilerError) -> str:
    """The error's message with bad options named by their CLI flags (also inside a failed unit)."""
    bad = error if isinstance(error, BadParameter) else error.__cause__
    if not isinstance(bad, BadParameter):
        return str(error)
    return str(error).replace(str(bad), f"invalid value for {spelled(bad.option)}: {bad.detail}")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""


# seconds the main thread has to unwind after Ctrl-C or SIGTERM before the process exits anyway
STOP_GRACE = 5.0
STOPS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


def _stop_requested(signum, frame):
    """Ctrl-C or SIGTERM: unwind the main thread (KeyboardInterrupt / Terminated, which the
    executors answer by cancelling queued units), and arm a watchdog that exits anyway after
    STOP_GRACE seconds, should the main thread be held up (a long C call, a lock)."""
    code, word = STOPS[signum]
    if not getattr(_stop_requested, "armed", False):
        _stop_requested.armed = True
        watchdog = threading.Timer(STOP_GRACE, _exit_now, args=(word, code))
        watchdog.daemon = True
        watchdog.start()
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _exit_now(word: str, code: int):
    os.write(2, f"tiler: {word}; run the same command again to resume\n".encode())
    os._exit(code)


def _stop(message: str, code: int, verbose: bool):
    """Ctrl-C or SIGTERM: say how to resume and exit now, without waiting for the units still
    running on worker threads (the executor has cancelled the queued ones; those running leave
    their chunks unmarked, so the rerun computes them)."""
    click.echo(f"tiler: {message}", err=True)
    if verbose:
        import traceback

        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _log_to_stderr(verbose: bool):
    """tiler's own log lines (not those of the libraries, e.g. Dask's) as ``tiler: message``.
    rasterio's NotGeoreferencedWarning is expected (scans have no georeferencing, and the output
    then has none either) and not shown."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    logger = logging.getLogger("tiler")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("tiler: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int, verbose: bool):
    if verbose:
        import traceback

        traceback.print_exc()
    for line in message.splitlines() or [message]:  # one line per problem (workflow validation)
        click.echo(f"tiler: error: {line}", err=True)
    sys.exit(code)
