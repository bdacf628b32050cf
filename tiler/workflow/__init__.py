"""YAML workflows (``tiler run``): chain tasks over many files, checked before anything runs.

- ``source``: safe YAML loading, the line of every key, ``--set`` overrides
- ``schema``: the pydantic schema (keys = the CLI's option names)
- ``validate``: schema errors as ``file:line: key.path: value: what is allowed``
- ``runner``: planning every (file, step) ahead, skipping what is up to date, running the rest
"""

from __future__ import annotations

from pathlib import Path

from tiler.workflow.schema import Workflow
from tiler.workflow.source import Source, WorkflowError, load_source
from tiler.workflow.validate import parse_workflow


def load_workflow(path, overrides=()) -> tuple[Workflow, Source]:
    source = load_source(Path(path), overrides)
    return parse_workflow(source), source


__all__ = ["Workflow", "WorkflowError", "load_workflow"]
