"""Errors the library raises. Each names the bad value and what was expected; the CLI prints the
message on one line and exits with ``exit_code``."""


def first_line(error: BaseException) -> str:
    """An exception's message on one line (its first), or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class TilerError(Exception):
    """A run was refused or failed for a reason the user can act on (exit 1)."""

    exit_code = 1


class BadParameter(TilerError):
    """An option's value is not usable with this input (exit 2, like click's usage errors)."""

    exit_code = 2

    def __init__(self, option: str, message: str):
        super().__init__(f"invalid value for {option}: {message}")
        self.option = option


class InputError(TilerError):
    """The input raster is missing, unreadable or unusable."""


class OutputError(TilerError):
    """The output cannot be written where it was asked for (exists, folder unwritable, disk full)."""


class WorkdirError(TilerError):
    """The workdir is foreign, corrupt, or holds a different plan."""
