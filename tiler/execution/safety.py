"""Protecting what the user did not ask to replace.

An output is never written over any file the run reads (its input, mask, class file, model), even
with ``--overwrite``: paths are compared by the file they resolve to (``./in.tif`` and its absolute
path, symlinks, hard links). ``--overwrite`` replaces a regular file, or a Zarr store that tiler
wrote (its metadata says so), never another folder. The workdir may not be OUTPUT nor lie inside
it (export replaces OUTPUT, which would delete it)."""

from __future__ import annotations

import os
from pathlib import Path

from tiler.errors import BadParameter, OutputError
from tiler.execution.export import PLAN_TAG, written_by_tiler
from tiler.workdir.plan import Plan


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file or folder (by inode where both exist)."""
    return file_identity(a) == file_identity(b)


def file_identity(path) -> tuple | str:
    """What makes two paths one file: (device, inode) where it exists, else the resolved path."""
    try:
        stat = os.stat(path)
    except OSError:
        return str(Path(path).resolve())
    return (stat.st_dev, stat.st_ino)


def is_inside(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def files_read(plan: Plan) -> list[tuple[str, str]]:
    """(what, path) of every file the run reads."""
    read = [("the input", plan.input.path)]
    if plan.mask is not None and plan.mask.path:
        read.append(("the mask", plan.mask.path))
    if plan.labels is not None and plan.labels.classes_file:
        read.append(("the class file", plan.labels.classes_file))
    return read


def check_output(plan: Plan, workdir: Path, overwrite: bool) -> None:
    """Refuse, before any work, an OUTPUT that would destroy what the run reads or what tiler did
    not write, and a workdir that OUTPUT's replacement would delete."""
    output = Path(plan.output.path)
    for what, path in files_read(plan):
        if same_file(output, path):
            raise OutputError(
                f"{output}: is {what} of this run ({path}); tiler never writes over a file it "
                "reads, even with --overwrite: choose another OUTPUT"
            )
    if plan.diffusion is not None and is_inside(output, plan.diffusion.model_dir):
        raise OutputError(
            f"{output}: lies inside the model folder {plan.diffusion.model_dir}; choose another "
            "OUTPUT"
        )
    if is_inside(workdir, output):
        raise BadParameter(
            "workdir",
            f"{workdir} is OUTPUT or inside it ({output}), which the export replaces; choose a "
            "workdir beside OUTPUT",
        )
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise OutputError(f"{output}: already exists; pass --overwrite to replace it")
        if output.is_dir() and not written_by_tiler(output):
            raise OutputError(
                f"{output}: is a folder tiler did not write (no {PLAN_TAG} in a Zarr store's "
                "metadata); --overwrite replaces files and tiler's own Zarr outputs, never "
                "another folder"
            )
