"""Training checkpoints: one file per stage in the run's folder (``OUTPUT.train/``), replaced
atomically, read with ``torch.load(weights_only=True)`` (tensors and plain values only), and
tied to the run's fingerprint so that a re-run of the same command resumes and another is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tiler.errors import OutputError, first_line

MARKER = "tiler-train.json"


def run_folder(output: str, fingerprint: str, overwrite: bool) -> Path:
    """``OUTPUT.train/``: created for a new run; an existing one must hold this run (same
    fingerprint), or be replaced with ``overwrite`` when it is a tiler training folder."""
    folder = Path(str(output).rstrip("/\\") + ".train")
    marker = folder / MARKER
    if folder.exists():
        known = _read_marker(marker)
        if known is None:
            raise OutputError(f"{folder}: exists and is not a tiler training folder; move it away")
        if known.get("fingerprint") != fingerprint:
            if not overwrite:
                raise OutputError(
                    f"{folder}: holds the checkpoints of another training run (other "
                    "rasters or options); pass --overwrite to start afresh"
                )
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return folder


def _read_marker(marker: Path) -> dict | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(folder: Path, stage: str, state: dict) -> None:
    """Write ``stage``'s state as ``stage.pt``: a partial file renamed over the old one."""
    import torch

    path = folder / f"{stage}.pt"
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load(folder: Path, stage: str) -> dict | None:
    """``stage``'s last saved state, or None if it has none."""
    import torch

    path = folder / f"{stage}.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # a truncated or foreign file
        raise OutputError(
            f"{path}: unreadable checkpoint ({first_line(error)}); delete it to restart that stage"
        ) from error
