"""LDM semantic synthesis (``tiler synthesize``): an RGB image from a raster of class labels.

The latent grid is the label grid divided by the first stage's factor f (4 for the CompVis model);
every tile is computed. The conditioning of a latent box is the label rescaler applied to its
labels (``LabelConditioner``): with the CompVis card (bilinear x0.5 twice) each latent px sees
exactly its own f x f labels, so tiles and regions need no label context. The LDM stages
(tiler/tasks/ldm.py); decode writes RGB in [0, 255], px without a class are nodata (0), generated
px are kept >= 1 then.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from tiler.errors import InputError, ModelError
from tiler.geometry.grid import Box
from tiler.ldm.card import RESCALER, RESCALER_KEY, Labels, read_card
from tiler.ldm.folders import inspect_model
from tiler.ldm.options import DiffusionOptions
from tiler.raster.labels import LISTED, check_label_raster, read_classes, scan_values
from tiler.raster.sources import RasterInfo, SourceReader, describe, parse_bands
from tiler.raster.values import to_pixels, valid_mask
from tiler.tasks.ldm import LDMTask, plan_latent_grid
from tiler.workdir import arrays
from tiler.workdir.plan import LabelPlan, Plan
from tiler.workdir.store import Workdir

log = logging.getLogger("tiler")

# The model's [-1, 1] is written as 8-bit RGB.
IMAGE_RANGE = "0,255"

# Generated px are kept at >= 1 when 0 marks the px without a class (GDAL nodata is per band).
NODATA = 0


def plan_synthesize(
    labels_path,
    output_path=None,
    *,
    model: str,
    classes_file=None,
    bands: str | None = None,
    output_format: str | None = None,
    creation_overrides: dict[str, str] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    region: int | None = None,
    halo: int | None = None,
    diffusion: DiffusionOptions | None = None,
) -> Plan:
    """Describe the label raster, check the model folder (no weights loaded), map every label value
    to a class (one scan of the raster), and work out the run."""
    info = describe(labels_path)
    band_list = parse_bands(bands, info) if bands else (1,)
    check_label_raster(info, band_list)
    diffusion = replace(diffusion or DiffusionOptions(), value_range=IMAGE_RANGE)
    folder = inspect_model(model, "synthesis", allow_pickle=diffusion.allow_pickle)
    conditioning = folder.card.conditioning
    _check_rescaling(folder.path, conditioning, folder.factor)
    labels = plan_labels(info, band_list[0], conditioning.classes, classes_file)
    if labels.labelled_px == 0:
        mapped = f" in {classes_file}" if classes_file else ""
        raise InputError(
            f"{info.path}: no px has a class (all nodata or mapped to null{mapped}); "
            "expected at least one labelled px"
        )
    plan = plan_latent_grid(
        info,
        band_list,
        folder,
        model=model,
        command="synthesize",
        input_path=labels_path,
        output_path=output_path,
        tag="synth",
        output_format=output_format,
        creation_overrides=creation_overrides,
        grid=dict(tile=tile, overlap=overlap, region=region, halo=halo),
        diffusion=diffusion,
        labels=labels,
    )
    # 3 uint8 bands are written as RGB (GDAL's default photometric interpretation for them)
    return plan.model_copy(
        update={
            "output": plan.output.model_copy(
                update=dict(
                    count=folder.first_stage["out_channels"],
                    dtype="uint8",
                    nodata=NODATA if labels.unlabelled_px else None,
                )
            )
        }
    )


def _check_rescaling(model_dir: Path, labels: Labels, factor: int) -> None:
    """The card's resizing must bring label px to latent px."""
    reach = labels.multiplier**labels.rescale_stages
    if abs(reach * factor - 1) > 1e-9:
        raise ModelError(
            f"{model_dir / 'tiler.yaml'}: conditioning resizes labels by {reach:g} "
            f"({labels.rescale_stages} x {labels.multiplier:g}); the first stage's "
            f"latent is 1/{factor} of the image: expected {1 / factor:g}"
        )
    if not (model_dir / RESCALER).is_file():
        raise ModelError(f"{model_dir / RESCALER}: missing (the synthesis model's label rescaler)")


def plan_labels(info: RasterInfo, band: int, classes: int, classes_file=None) -> LabelPlan:
    """Scan the raster and map every value found; refuse values without a class."""
    counts = scan_values(info, band)
    source = str(classes_file) if classes_file else f"{info.path} (values as class ids)"
    table = read_classes(classes_file) if classes_file else {v: v for v in counts}
    unmapped = sorted(v for v in counts if v not in table)
    if unmapped:
        listed = ", ".join(f"{v} ({counts[v]} px)" for v in unmapped[:LISTED])
        more = f" and {len(unmapped) - LISTED} more" if len(unmapped) > LISTED else ""
        raise InputError(
            f"{info.path}: {len(unmapped)} value(s) have no class in "
            f"{classes_file}: {listed}{more}; add them to the file (null = no class)"
        )
    bad = sorted(v for v in counts if table[v] is not None and not 0 <= table[v] < classes)
    if bad:
        listed = ", ".join(f"{v} -> {table[v]}" for v in bad[:LISTED])
        raise InputError(
            f"{source}: class id(s) out of range: {listed}; the model has classes 0..{classes - 1}"
        )
    no_class = sum(n for v, n in counts.items() if table[v] is None)
    labelled = sum(counts.values()) - no_class
    return LabelPlan(
        classes_file=str(Path(classes_file).absolute()) if classes_file else None,
        classes=classes,
        mapping=tuple(sorted((v, table[v]) for v in counts)),
        labelled_px=labelled,
        unlabelled_px=info.width * info.height - labelled,
    )


class SynthesisTask(LDMTask):
    """The LDM stages with label conditioning."""

    def __init__(
        self, plan: Plan, store: Workdir, reader: SourceReader, model, batch_size: int | None
    ):
        super().__init__(plan, store, reader, model, batch_size)
        self.labels = label_conditioner(plan)
        self.margin = self.labels.margin()

    def condition(self, canvas: Box) -> np.ndarray:
        """The rescaled label vectors over the latent ``canvas`` (labels reflected past the
        edges)."""
        outer = canvas.grow(self.margin)
        condition = self.labels.condition(self.reader.read(outer.scale(self.f)))
        rows, cols = canvas.relative_to(outer)
        return condition[:, rows, cols]

    def decode(self, index):
        core = self.grid.chunk_box(index, self.plan.grid.chunk)
        box = self.pixel_box(core)
        values = self.decoded(core)
        valid = self.labels.has_class(self.reader.read(box))[None]
        if self.plan.output.nodata is not None:  # 0 marks px without a class, in every band
            values = np.maximum(values, np.float32(1))
        out = self.plan.output
        arrays.write_core(
            self.store,
            "output",
            box,
            to_pixels(
                values, np.broadcast_to(valid, values.shape), out.dtype, self.plan.output_fill
            ),
        )
        self.store.mark_done("decode", index)

    def denormalise(self, pixels: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [0, 255], every channel kept."""
        return (pixels + np.float32(1)) * np.float32(127.5)


def label_conditioner(plan: Plan):
    """The label conditioning of ``plan``'s model: its card's resizing and its rescaler weights."""
    from safetensors.numpy import load_file

    model_dir = Path(plan.diffusion.model_dir)
    card = read_card(model_dir).conditioning
    weight = load_file(str(model_dir / RESCALER))[RESCALER_KEY]
    return LabelConditioner(
        plan.labels, plan.input.nodata, weight, card.rescale_stages, card.multiplier, card.method
    )


class LabelConditioner:
    """The model's conditioning of boxes of the label raster: value -> class -> the rescaler's
    vector (a lookup), then the card's resizing stages."""

    def __init__(
        self,
        labels: LabelPlan,
        nodata,
        weight: np.ndarray,
        stages: int,
        multiplier: float,
        method: str,
    ):
        vectors = weight[:, :, 0, 0].T.astype(np.float32)  # (classes, out)
        self.values = np.array([value for value, _ in labels.mapping], dtype=np.int64)
        # one row per mapped value, and a last row of zeros for "no class"
        rows = [
            vectors[cls] if cls is not None else np.zeros(vectors.shape[1], np.float32)
            for _, cls in labels.mapping
        ]
        self.rows = np.stack(rows + [np.zeros(vectors.shape[1], np.float32)])
        self.row_has_class = np.array([cls is not None for _, cls in labels.mapping] + [False])
        self.nodata = nodata
        self.stages, self.multiplier, self.method = stages, multiplier, method

    def classified(self, labels: np.ndarray) -> np.ndarray:
        """(1, h, w) labels -> (h, w) row index into ``rows`` (the last: no class)."""
        values = labels[0].astype(np.int64)
        index = np.searchsorted(self.values, values).clip(0, len(self.values) - 1)
        known = (self.values[index] == values) & valid_mask(labels, self.nodata)[0]
        return np.where(known, index, len(self.values))

    def has_class(self, labels: np.ndarray) -> np.ndarray:
        """(1, h, w) labels -> (h, w) True where the px has a class (the output has data there)."""
        return self.row_has_class[self.classified(labels)]

    def condition(self, labels: np.ndarray) -> np.ndarray:
        """(1, H, W) labels -> (out, H * m^stages, W * m^stages) float32 conditioning."""
        import torch
        import torch.nn.functional as F

        vectors = self.rows[self.classified(labels)]  # (H, W, out)
        tensor = torch.from_numpy(np.ascontiguousarray(vectors.transpose(2, 0, 1)))[None]
        for _ in range(self.stages):
            tensor = F.interpolate(tensor, scale_factor=self.multiplier, mode=self.method)
        return tensor[0].numpy()

    def margin(self) -> int:
        """Latent px of label context each side that the resizing stages read (0 for the 2x2
        means of bilinear or area at 0.5; a safe 2 for wider kernels)."""
        return 0 if self.method in ("bilinear", "area") and self.multiplier == 0.5 else 2
