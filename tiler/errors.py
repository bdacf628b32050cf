"""Errors the library raises. Each names the bad value and what was expected; the CLI prints the
message on one line and exits with ``exit_code``."""


def first_line(error: BaseException) -> str:
    """An exception's message on one line (its first), or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def root_cause(error: BaseException) -> BaseException:
    """The first error of a chain (rasterio chains GDAL's own message as the cause)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class TilerError(Exception):
    """A run was refused or failed for a reason the user can act on (exit 1)."""

    exit_code = 1


class BadParameter(TilerError):
    """An option's value is not usable with this input (exit 2, like click's usage errors).

    ``option`` is the option's plain name, as the library's parameters call it (``tile``,
    ``bands``, ``value_range``, ``output``; ``steps/minutes`` for a pair); the CLI and the workflow
    each spell it their way (``--tile``, ``-b/--bidx``; ``steps[0].bidx``) around ``detail``."""

    exit_code = 2

    def __init__(self, option: str, detail: str):
        super().__init__(f"invalid value for {option}: {detail}")
        self.option = option
        self.detail = detail


class InputError(TilerError):
    """The input raster is missing, unreadable or unusable."""


class OutputError(TilerError):
    """The output cannot be written where it was asked for (exists, folder unwritable, disk
    full)."""


class WorkdirError(TilerError):
    """The workdir is foreign, corrupt, or holds a different plan."""


class UnitFailed(TilerError):
    """One unit of a stage (a region or an output chunk) failed; names it and the cause."""

    def __init__(self, stage: str, unit_name: str, index, cause: BaseException):
        where = f"{cause.filename}: " if isinstance(cause, OSError) and cause.filename else ""
        reason = getattr(cause, "strerror", None) or first_line(cause)
        if not isinstance(cause, (TilerError, OSError)):  # a bug or a library's error: say which
            reason = f"{type(cause).__name__}: {reason}"
        super().__init__(f"{stage} of {unit_name} {tuple(index)} failed: {where}{reason}")
        self.exit_code = getattr(cause, "exit_code", 1)


class ModelError(TilerError):
    """The model cannot be found, is not the kind of model expected, holds unsafe (pickle) weights,
    or fails to load (exit 1)."""


class NotATilerOutput(InputError):
    """The raster carries no plan, so its tile geometry is unknown."""
