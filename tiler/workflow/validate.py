"""From a parsed workflow file to a validated ``Workflow``, or one error line per problem, each
naming ``file:line: key.path``, the bad value and what is allowed."""

from __future__ import annotations

import copy
import difflib

from tiler.workflow.schema import STEP_CLASSES, TASKS, Workflow, step_keys
from tiler.workflow.source import KeyPath, Source, WorkflowError


def parse_workflow(source: Source) -> Workflow:
    from pydantic import ValidationError

    data, from_defaults = _merge_defaults(source)
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: source.line_of(_key_path(error["loc"])))
        problems = [_describe(source, error, from_defaults) for error in errors]  # in file order
        raise WorkflowError("\n".join(dict.fromkeys(problems))) from None


def _merge_defaults(source: Source) -> tuple[dict, dict[int, set[str]]]:
    """Each step gets the ``defaults`` keys its task takes (its own keys win). Returns the data
    and, per step, the keys that came from ``defaults`` (their errors point there)."""
    data = copy.deepcopy(source.data)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(data.get("steps"), list):
        return data, {}
    taken = set()
    from_defaults = {}
    for index, step in enumerate(data["steps"]):
        if not isinstance(step, dict) or step.get("task") not in STEP_CLASSES:
            continue
        keys = step_keys(step["task"]) - {"name", "task", "output", "input"}
        added = {key for key in defaults if key in keys and key not in step}
        taken |= {key for key in defaults if key in keys}
        data["steps"][index] = {**{key: defaults[key] for key in added}, **step}
        from_defaults[index] = added
    unused = [key for key in defaults if key not in taken]
    if unused:
        allowed = sorted(
            set().union(*(step_keys(task) for task in TASKS)) - {"name", "task", "output", "input"}
        )
        key = unused[0]
        raise WorkflowError(
            f"{source.where(('defaults', key))}: no step takes"
            f"{_did_you_mean(key, allowed)}; defaults hold step options: "
            f"{', '.join(allowed)}"
        )
    data["defaults"] = {}
    return data, from_defaults


def _describe(source: Source, error: dict, from_defaults: dict[int, set[str]]) -> str:
    path = _key_path(error["loc"])
    if len(path) >= 3 and path[0] == "steps" and path[2] in from_defaults.get(path[1], ()):
        path = ("defaults",) + path[2:]
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(source, path[:-1])
        return (
            f"{source.where(path)}: unknown key{_did_you_mean(path[-1], allowed)}; "
            f"expected one of: {', '.join(allowed)}"
        )
    if kind == "missing":
        return f"{source.where(path)}: missing; this key is required"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        shown = value.get("task") if isinstance(value, dict) else value
        return (
            f"{source.where(path + ('task',))}: {shown!r} is not a task; expected one of: "
            f"{', '.join(TASKS)}"
        )
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and len(path) == 0:  # a whole-workflow check names its own key path
        return f"{source.path}: {message}"
    shown = "" if isinstance(value, dict) else f"{value!r}: "  # a whole step: its own message says
    return f"{source.where(path)}: {shown}{message[0].lower() + message[1:]}"


def _key_path(loc: tuple) -> KeyPath:
    """pydantic's location without the union tags it inserts (``steps.1.upscale.tile``)."""
    path = []
    for part in loc:
        if len(path) == 2 and path[0] == "steps" and part in STEP_CLASSES:
            continue
        path.append(part)
    return tuple(path)


def _allowed_keys(source: Source, parent: KeyPath) -> list[str]:
    if len(parent) == 2 and parent[0] == "steps":
        step = source.data["steps"][parent[1]]
        task = step.get("task") if isinstance(step, dict) else None
        if task in STEP_CLASSES:
            return sorted(step_keys(task))
    if parent == ("cluster",):
        from tiler.execution.cluster import ExecutionOptions

        return sorted(name.replace("_", "-") for name in ExecutionOptions.model_fields)
    if parent == ():
        return sorted(name.replace("_", "-") for name in Workflow.model_fields)
    return []


def _did_you_mean(key, allowed) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close and close[0] == str(key):  # valid elsewhere (another task's key): no suggestion
        return f" {key!r}"
    return f" {key!r} (did you mean {close[0]!r}?)" if close else f" {key!r}"
