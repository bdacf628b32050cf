"""The workdir: a Zarr group holding a run's plan, its intermediate arrays and its completion state.

Every chunk has exactly one writer: a region writes its own chunk of ``regions`` (or, without halo,
its own chunk of ``output``), an assembly unit writes its own chunk of ``output``. Zarr's local
store writes each chunk atomically (temp file + rename), and a unit marks itself done in a
``done/<stage>`` array (one chunk per unit) only after its data is written, so a crash loses at
most the units in flight.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from tiler.errors import OutputError, WorkdirError
from tiler.workdir.plan import Plan, plan_from_json

MARKER = "tiler_workdir"
# Intermediate arrays are written once and read once: fast compression beats small files.
FAST_ZSTD = {"name": "zstd", "configuration": {"level": 1}}
# Zarr by default compares each chunk with the fill value to skip storing empty ones: a full pass
# over every chunk on Zarr's single I/O thread, for no gain here (and completion flags are 0 or 1).
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


class Workdir:
    def __init__(self, path: Path, group, plan: Plan, specs: dict[str, dict]):
        self.path = path
        self.group = group
        self.plan = plan
        self.specs = specs

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls, path: Path, plan: Plan, specs: dict[str, dict], overwrite: bool = False
    ) -> tuple[Workdir, bool]:
        """Resume the workdir at ``path`` if it holds ``plan``; create it if absent. ``specs`` are
        the task's arrays: name -> zarr ``create_array`` arguments.

        Returns (workdir, resumed). A workdir with another plan, or a corrupt one, is replaced only
        with ``overwrite``; a folder that is not a tiler workdir is never deleted."""
        path = Path(path)
        if path.exists() and not is_empty_dir(path):
            held = cls._read_plan(path)
            if held is not None and held.fingerprint == plan.fingerprint:
                try:
                    return cls._open(path, plan, specs), True
                except WorkdirError:  # same plan, damaged arrays: --overwrite starts again
                    if not overwrite:
                        raise
            elif not overwrite:
                if held is None:
                    raise WorkdirError(
                        f"{path}: workdir is corrupt (no readable plan); "
                        "pass --overwrite to start again"
                    )
                raise WorkdirError(
                    f"{path}: workdir holds a different plan (fingerprint "
                    f"{held.fingerprint}, this run {plan.fingerprint}); pass "
                    "--overwrite to discard it or choose another --workdir"
                )
            remove_workdir(path)
        return cls._create(path, plan, specs), False

    @staticmethod
    def _read_plan(path: Path) -> Plan | None:
        """The plan a workdir holds; None if it is a tiler workdir that cannot be read.

        Raises WorkdirError for a folder that is not a tiler workdir."""
        import zarr

        if not is_workdir(path):
            raise WorkdirError(
                f"{path}: exists and is not a tiler workdir; remove it or choose another --workdir"
            )
        try:
            group = zarr.open_group(str(path), mode="r")
            return plan_from_json(group.attrs["plan"])
        except Exception:
            return None

    @classmethod
    def open(cls, path: Path, plan: Plan, specs: dict[str, dict]) -> Workdir:
        """Open an existing workdir made for ``plan`` (a worker joining a run)."""
        held = cls._read_plan(path) if is_workdir(path) else None
        if held is None or held.fingerprint != plan.fingerprint:
            raise WorkdirError(
                f"{path}: no workdir of plan {plan.fingerprint} there; is it on a "
                "file system every worker shares, at the same path?"
            )
        return cls._open(path, plan, specs)

    @classmethod
    def _open(cls, path: Path, plan: Plan, specs: dict[str, dict]) -> Workdir:
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r+")
            workdir = cls(path, group, plan, specs)
            workdir._check_arrays()
        except (KeyError, ValueError, OSError) as exc:
            raise WorkdirError(
                f"{path}: workdir is corrupt ({exc}); pass --overwrite to start again"
            ) from None
        return workdir

    @classmethod
    def _create(cls, path: Path, plan: Plan, specs: dict[str, dict]) -> Workdir:
        import zarr

        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER).write_text(plan.fingerprint + "\n")
        group = zarr.open_group(str(path), mode="a")
        workdir = cls(path, group, plan, specs)
        workdir._create_arrays()
        group.attrs["plan"] = plan.model_dump_json()
        return workdir

    # --- arrays --------------------------------------------------------------------------------
    def _create_arrays(self):
        for name, spec in self.specs.items():
            self.group.create_array(name, compressors=FAST_ZSTD, config=WRITE_EVERY_CHUNK, **spec)

    def _check_arrays(self):
        for name, spec in self.specs.items():
            array = self.group[name]
            held = (tuple(array.shape), tuple(array.chunks))
            if held != (spec["shape"], spec["chunks"]):
                raise ValueError(
                    f"array {name} has shape {held[0]} in chunks {held[1]}, expected "
                    f"{spec['shape']} in chunks {spec['chunks']}: made by another "
                    "tiler version?"
                )

    def array(self, name: str):
        return self.group[name]

    @contextlib.contextmanager
    def writing(self):
        """Name the workdir in write failures: Zarr's OSErrors (disk full, quota) carry no file
        name."""
        try:
            yield
        except OSError as exc:
            raise OutputError(
                f"{self.path}: writing the workdir failed: {exc.strerror or exc}; "
                "free some space or choose another --workdir"
            ) from exc

    # --- completion state ----------------------------------------------------------------------
    def pending(self, stage: str) -> list[tuple[int, int]]:
        """The units of ``stage`` not marked done, in row-major order."""
        done = self._flagged(stage)
        return [
            index for index in np.ndindex(self.group[f"done/{stage}"].shape) if index not in done
        ]

    def _flagged(self, stage: str) -> set[tuple[int, int]]:
        """The units whose done flag is set. A flag is a chunk of its own, written once (atomically)
        and only with 1, so the flags set are the chunk files present under Zarr v3's default chunk
        keys ``c/<row>/<col>``: one directory scan, where reading the 38,000 flags of a 50,000 px
        run took 20 s. Names that are not numbers (a write a crash interrupted) are skipped."""
        root = self.path / "done" / stage / "c"
        if not root.is_dir():
            return set()
        return {
            (int(row.name), int(col.name))
            for row in os.scandir(root)
            if row.name.isdigit() and row.is_dir()
            for col in os.scandir(row.path)
            if col.name.isdigit()
        }

    def has_progress(self) -> bool:
        """Whether any unit of any stage is done (a rerun would resume something)."""
        return any(
            name.isdigit()
            for stage in (self.path / "done").glob("*/c")
            for row in stage.iterdir()
            for name in os.listdir(row)
        )

    def is_done(self, stage: str, index: tuple[int, int]) -> bool:
        iy, ix = index
        return bool(self.group[f"done/{stage}"][iy, ix])

    def mark_done(self, stage: str, index: tuple[int, int]):
        iy, ix = index
        with self.writing():
            self.group[f"done/{stage}"][iy : iy + 1, ix : ix + 1] = 1


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def is_workdir(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def remove_workdir(path: Path, keep_folder: bool = False):
    """Delete a tiler workdir (and only a tiler workdir); ``keep_folder`` empties it instead (for a
    folder the user made and handed over empty)."""
    if not is_workdir(path):
        raise WorkdirError(f"{path}: refusing to delete a folder that is not a tiler workdir")
    shutil.rmtree(path)
    if keep_folder:
        path.mkdir()
