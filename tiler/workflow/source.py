"""Reading a workflow file: safe YAML, the line of every key (for error messages), ``--set``.

Key paths are tuples like ``("steps", 1, "overlap")``, written ``steps[1].overlap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tiler.errors import TilerError

KeyPath = tuple


class WorkflowError(TilerError):
    """The workflow file is not usable; one line per problem, each naming file:line and key path."""

    exit_code = 2


@dataclass
class Source:
    path: Path
    data: dict
    lines: dict[KeyPath, int] = field(default_factory=dict)  # key path -> 1-based line
    overridden: set[KeyPath] = field(default_factory=set)  # key paths set by --set

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path`` or of its closest ancestor (0 if none)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 0

    def where(self, path: KeyPath) -> str:
        """``file:line: key.path`` for a key path (its closest ancestor's line if it has none)."""
        shown = key_path_text(path)
        if any(path[: len(set_path)] == set_path for set_path in self.overridden):
            return f"{self.path}: {shown} (from --set)"
        line = self.line_of(path)
        return f"{self.path}:{line}: {shown}" if line else f"{self.path}: {shown}"


def key_path_text(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_source(path, overrides=()) -> Source:
    """Parse ``path`` with PyYAML's safe loader and apply ``--set KEY=VALUE`` overrides."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkflowError(f"{path}: cannot read the workflow: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise WorkflowError(
            f"{path}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None
    if not isinstance(data, dict):
        raise WorkflowError(
            f"{path}: expected a mapping with inputs and steps at the top level, "
            f"got {type(data).__name__}"
        )
    source = Source(path, data)
    _collect_lines(node, (), source)
    for item in overrides:
        _apply_override(source, item)
    return source


def _collect_lines(node, path: KeyPath, source: Source):
    import yaml

    source.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise WorkflowError(
                    f"{source.path}:{key_node.start_mark.line + 1}: "
                    f"{key_path_text(path + (key,))}: duplicate key"
                )
            seen.add(key)
            source.lines[path + (key,)] = key_node.start_mark.line + 1
            _collect_lines(value_node, path + (key,), source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, path + (index,), source)


def _apply_override(source: Source, item: str):
    """``steps[1].overlap=8``, ``steps.up.overlap=8`` (a step by name), ``cluster.workers=4``;
    VALUE is read as YAML (``8`` is a number, ``null`` unsets)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise WorkflowError(f"--set {item!r}: expected KEY=VALUE, e.g. steps[0].scale=2")
    parts = _parse_key(key.strip(), item)
    if len(parts) > 1 and parts[0] == "steps" and isinstance(parts[1], str):
        parts[1] = _step_index(source.data.get("steps"), parts[1], item)
    target = source.data
    for depth, part in enumerate(parts[:-1]):
        target = _child(target, part, item, tuple(parts[:depth]))
    last = parts[-1]
    if isinstance(target, list) and not (isinstance(last, int) and 0 <= last < len(target)):
        raise WorkflowError(
            f"--set {item!r}: {key_path_text(tuple(parts[:-1]))} has {len(target)} items"
        )
    if not isinstance(target, (dict, list)):
        raise WorkflowError(f"--set {item!r}: {key_path_text(tuple(parts[:-1]))} is not a mapping")
    target[last] = yaml.safe_load(value)
    source.overridden.add(tuple(parts))


def _parse_key(key: str, item: str) -> list:
    import re

    parts = []
    for token in key.split("."):
        match = re.fullmatch(r"([A-Za-z_][\w-]*)((?:\[\d+\])*)", token)
        if not match:
            raise WorkflowError(
                f"--set {item!r}: {token!r} is not a key; expected e.g. "
                "steps[0].scale or cluster.workers"
            )
        parts.append(match.group(1))
        parts += [int(index) for index in re.findall(r"\[(\d+)\]", match.group(2))]
    return parts


def _child(target, part, item: str, path: KeyPath):
    if isinstance(target, dict) and isinstance(part, str):
        return target.setdefault(part, {})
    if isinstance(target, list) and isinstance(part, int) and 0 <= part < len(target):
        return target[part]
    raise WorkflowError(
        f"--set {item!r}: {key_path_text(path) if path else 'the top level'} has no {part!r}"
    )


def _step_index(steps, name: str, item: str) -> int:
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict) and step.get("name") == name:
            return index
    raise WorkflowError(f"--set {item!r}: no step named {name!r}")
