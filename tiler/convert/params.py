"""A validated view of one mapping of a parsed config file: every failure is a one-line ModelError
naming the file, the dotted key, the value found and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiler.errors import ModelError

_REQUIRED = object()


class Params:
    """One params mapping of the config, every failure a one-line ModelError naming the file and
    the dotted key."""

    def __init__(self, path: Path, where: str, data: Any):
        if not isinstance(data, dict):
            raise ModelError(f"{path}: {where}: {short(data)}; expected a mapping")
        self.path, self.where, self.data = path, where, data

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, expected: str):
        value = self.data.get(name, "(missing)")
        raise ModelError(f"{self.path}: {self.key(name)}: {short(value)}; expected {expected}")

    def sub(self, name: str) -> Params:
        if name not in self.data:
            self.fail(name, "a mapping")
        return Params(self.path, self.key(name), self.data[name])

    def get(self, name: str, default=_REQUIRED):
        if name not in self.data:
            if default is _REQUIRED:
                self.fail(name, "a value")
            return default
        return self.data[name]

    def int(self, name: str, default=_REQUIRED, minimum: int | None = None) -> int:
        value = self.get(name, default)
        too_small = minimum is not None and isinstance(value, int) and value < minimum
        if not isinstance(value, int) or isinstance(value, bool) or too_small:
            self.fail(name, f"an integer{f' >= {minimum}' if minimum is not None else ''}")
        return value

    def number(self, name: str, default=_REQUIRED) -> float:
        value = self.get(name, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.fail(name, "a number")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            self.fail(name, "true or false")
        return value

    def ints(self, name: str, default=_REQUIRED) -> list[int]:
        value = self.get(name, default)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            self.fail(name, "a list of integers")
        return list(value)

    def require(self, name: str, allowed: tuple, default, expected: str):
        value = self.get(name, default)
        if value not in allowed:
            self.fail(name, expected)
        return value


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
