"""The library entry point behind ``tiler synthesize``: plan a semantic-synthesis run (the run itself
is ``run_upscale``, which runs any plan)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .errors import InputError
from .labels import check_label_raster, plan_labels
from .model_card import RESCALER, Labels, ModelError
from .plan import Plan
from .raster import describe, parse_bands
from .tasks.superres import DiffusionOptions

log = logging.getLogger("tiler")

# The model's [-1, 1] is written as 8-bit RGB.
IMAGE_RANGE = "0,255"
# Generated px are kept at >= 1 when 0 marks the px without a class (GDAL nodata is per band).
NODATA = 0


def default_output(labels_path: Path, fmt: str | None) -> Path:
    from .upscale import OUTPUT_SUFFIX

    return labels_path.with_name(f"{labels_path.stem}_synth{OUTPUT_SUFFIX[fmt or 'GTiff']}")


def plan_synthesize(labels_path, output_path=None, *, model: str, classes_file=None,
                    bands: str | None = None, output_format: str | None = None,
                    creation_overrides: dict[str, str] | None = None, tile: int | None = None,
                    overlap: int | None = None, region: int | None = None, halo: int | None = None,
                    diffusion: DiffusionOptions | None = None) -> Plan:
    """Describe the label raster, check the model folder (no weights loaded), map every label value
    to a class (one scan of the raster), and work out the run."""
    from .generative import plan_generative
    from .model_card import inspect_model

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
        raise InputError(f"{info.path}: no px has a class (all nodata or mapped to null{mapped}); "
                         "expected at least one labelled px")
    output = Path(output_path) if output_path else default_output(Path(labels_path), output_format)
    plan = plan_generative(info, band_list, folder, model=model, task="synthesize", output=output,
                           output_format=output_format, creation_overrides=creation_overrides,
                           grid=dict(tile=tile, overlap=overlap, region=region, halo=halo),
                           diffusion=diffusion, labels=labels)
    # 3 uint8 bands are written as RGB (GDAL's default photometric interpretation for them)
    return plan.model_copy(update={"output": plan.output.model_copy(update=dict(
        count=folder.first_stage["out_channels"], dtype="uint8",
        nodata=NODATA if labels.unlabelled_px else None))})


def _check_rescaling(model_dir: Path, labels: Labels, factor: int) -> None:
    """The card's resizing must bring label px to latent px."""
    reach = labels.multiplier ** labels.rescale_stages
    if abs(reach * factor - 1) > 1e-9:
        raise ModelError(f"{model_dir / 'tiler.yaml'}: conditioning resizes labels by {reach:g} "
                         f"({labels.rescale_stages} x {labels.multiplier:g}); the first stage's "
                         f"latent is 1/{factor} of the image: expected {1 / factor:g}")
    if not (model_dir / RESCALER).is_file():
        raise ModelError(f"{model_dir / RESCALER}: missing (the synthesis model's label rescaler)")
