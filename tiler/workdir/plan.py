"""The plan: everything a run depends on, as JSON, with a fingerprint that decides whether a workdir
can be resumed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tiler.geometry.grid import TileGrid
from tiler.raster.formats import OutputFormat, output_transform
from tiler.raster.sources import RasterInfo, path_identity
from tiler.raster.values import fill_value

PLAN_VERSION = 1


class _Frozen(BaseModel):
    # fields with an alias keep it in JSON (and so in fingerprints); code uses the field's name
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        ser_json_inf_nan="constants",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class InputSpec(RasterInfo):
    """The input raster, with its absolute path and the file's identity (a changed file
    invalidates a workdir)."""

    size_bytes: int
    mtime_ns: int

    @classmethod
    def from_info(cls, info: RasterInfo) -> InputSpec:
        """The file's identity now (``path_identity``)."""
        path, size, mtime = path_identity(info.path)
        return cls(**(info.model_dump() | dict(path=path)), size_bytes=size, mtime_ns=mtime)


class GridSpec(_Frozen):
    """Tile, overlap, region and halo sizes in latent px (for classical models: input px); chunk is
    the block of the latent grid behind one output chunk (the unit of assembly, decoding,
    export)."""

    tile: int
    overlap: int
    region: int
    halo: int
    chunk: int


class OutputSpec(_Frozen):
    path: str
    format: OutputFormat
    creation_options: dict[str, str]
    dtype: str
    nodata: float | None
    width: int
    height: int
    count: int
    transform: tuple[float, float, float, float, float, float] | None


class TextSpec(_Frozen):
    """A text-conditioned model's prompts and classifier-free guidance scale (1: no guidance)."""

    prompt: str
    negative_prompt: str
    guidance_scale: float

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1


def _absent(value) -> bool:
    return value is None


class DiffusionSpec(_Frozen):
    """What an LDM run's arrays depend on, beyond the grid: the model's identity, the sampling
    settings, the arithmetic (dtype) and how raster values map to the model's [-1, 1]."""

    model_dir: str
    weights: tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) of each weight file
    sampler: str
    steps: int
    eta: float
    seed: int
    dtype: str
    value_range: tuple[float, float]
    latent_channels: int
    decode_tile: int
    decode_halo: int
    # one set of first-stage GroupNorm statistics per run (tiler/ldm/norm_stats.py)
    shared_norm: bool = False
    # super-resolution: every output block's mean made the input px under it
    # (tiler/geometry/back_projection.py)
    back_project: bool = False
    # text-conditioned models (left out of the JSON when absent: older plans keep their
    # fingerprints): the prompts and guidance; the x4 upscaler's low-res noise level
    text: TextSpec | None = Field(default=None, exclude_if=_absent)
    noise_level: int | None = Field(default=None, exclude_if=_absent)

    @property
    def unet_passes(self) -> int:
        """UNet evaluations per tile and step: two with classifier-free guidance."""
        return 2 if self.text is not None and self.text.guided else 1


class MaskPlan(_Frozen):
    """Inpainting: where the area to fill comes from (see tiler/raster/mask.py), the mask file's
    identity, and what the plan-time scan found."""

    source: Literal["file", "nodata", "band"]
    path: str | None = None
    band: int | None = None
    dilate: int = 0
    size_bytes: int = -1
    mtime_ns: int = -1
    masked_px: int
    tiles_touched: int

    def spec(self):
        from tiler.raster.mask import MaskSpec

        return MaskSpec(self.source, self.path, self.band, self.dilate)


class LabelPlan(_Frozen):
    """Semantic synthesis: the model class of every value found in the label raster (None: no
    class, the output px is nodata), where the mapping came from, and what the scan counted."""

    classes_file: str | None = None  # None: raster values are the model's class ids
    classes: int  # the model's class count
    mapping: tuple[tuple[int, int | None], ...]  # (raster value, class id or None), sorted
    labelled_px: int
    unlabelled_px: int  # nodata or mapped to None


class Plan(_Frozen):
    version: int = PLAN_VERSION
    # the command that made the plan (``task`` in JSON, as plans have always written it); the task
    # classes running it are tiler.tasks'
    command: Literal["upscale", "inpaint", "synthesize"] = Field("upscale", alias="task")
    model: str
    scale: int
    bands: tuple[int, ...]
    context: int
    input: InputSpec
    grid: GridSpec
    output: OutputSpec
    diffusion: DiffusionSpec | None = None
    factor: int = 1  # input px per latent px (1: the latent grid is the input grid, as for LDM-SR)
    mask: MaskPlan | None = None
    labels: LabelPlan | None = None

    @property
    def is_classical(self) -> bool:
        return self.diffusion is None

    def tile_grid(self) -> TileGrid:
        f = self.factor
        return TileGrid(
            -(-self.input.height // f),
            -(-self.input.width // f),
            self.grid.tile,
            self.grid.overlap,
            self.grid.region,
            self.grid.halo,
        )

    @property
    def fingerprint(self) -> str:
        """Hash of what the workdir's arrays depend on: input identity, model, grid, dtype.

        The output's path, format and creation options only affect the export, so changing them
        resumes the run and exports again."""
        work = self.model_dump(
            mode="json", exclude={"output": {"path", "format", "creation_options"}}
        )
        return hashlib.sha256(_canonical_json(work).encode()).hexdigest()[:16]

    def output_info(self) -> RasterInfo:
        """What the output will be, described as an input (for planning the step that reads it
        before it exists)."""
        out = self.output
        return RasterInfo(
            path=out.path,
            width=out.width,
            height=out.height,
            count=out.count,
            dtype=out.dtype,
            nodata=out.nodata,
            crs_wkt=self.input.crs_wkt,
            transform=out.transform or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            georeferenced=out.transform is not None,
            descriptions=self.output_descriptions(),
        )

    def output_descriptions(self) -> tuple[str, ...]:
        """Band descriptions of the output: the processed bands' own, or, where the output's bands
        are not the input's (synthesis makes RGB from labels), the colour names."""
        if self.output.count != len(self.bands):
            return (
                ("red", "green", "blue", "alpha")[: self.output.count]
                if self.output.count <= 4
                else ("",) * self.output.count
            )
        return tuple(self.input.descriptions[b - 1] for b in self.bands)

    @property
    def output_fill(self) -> float:
        return fill_value(self.output.dtype, self.output.nodata)

    def summary(self) -> dict:
        grid = self.tile_grid()
        ny, nx = grid.region_shape
        out = self.output
        return (
            {
                "input": self.input.path,
                "output": out.path,
                "format": out.format,
                "model": self.model,
                "scale": self.scale,
                "bands": list(self.bands),
                "input_size": [self.input.width, self.input.height],
                "output_size": [out.width, out.height],
                "dtype": out.dtype,
                "tile": self.grid.tile,
                "overlap": self.grid.overlap,
                "region": self.grid.region,
                "halo": self.grid.halo,
                "chunk": self.grid.chunk,
                "tiles": grid.tile_count,
                "tiles_computed": grid.computed_tile_count(),
                "regions": ny * nx,
                "region_grid": [nx, ny],
                "overhead_factor": round(grid.overhead_factor(), 4),
                "workdir_bytes_max": self.workdir_bytes(),
                "fingerprint": self.fingerprint,
            }
            | self._diffusion_summary()
            | self._mask_summary()
            | self._labels_summary()
        )

    def _labels_summary(self) -> dict:
        if self.labels is None:
            return {}
        labels = self.labels
        return {
            "classes_file": labels.classes_file or "(raster values are class ids)",
            "label_values": len(labels.mapping),
            "model_classes": labels.classes,
            "unlabelled_px": labels.unlabelled_px,
        }

    def _mask_summary(self) -> dict:
        if self.mask is None:
            return {}
        mask = self.mask
        return {
            "mask": mask.path or mask.source + (f" {mask.band}" if mask.band else ""),
            "mask_dilate": mask.dilate,
            "masked_px": mask.masked_px,
            "masked_fraction": round(mask.masked_px / (self.input.width * self.input.height), 6),
            "tiles_computed": mask.tiles_touched,
            "unet_evaluations": mask.tiles_touched
            * self.diffusion.steps
            * self.diffusion.unet_passes,
        }

    def _diffusion_summary(self) -> dict:
        if self.diffusion is None:
            return {}
        spec = self.diffusion
        summary = {
            "model_dir": spec.model_dir,
            "sampler": spec.sampler,
            "steps": spec.steps,
            "eta": spec.eta,
            "seed": spec.seed,
            "model_dtype": spec.dtype,
            "value_range": list(spec.value_range),
            "decode_tile": spec.decode_tile,
            "decode_halo": spec.decode_halo,
            "shared_norm": spec.shared_norm,
            "unet_evaluations": self.tile_grid().computed_tile_count()
            * spec.steps
            * spec.unet_passes,
        }
        if spec.text is not None:
            summary |= {
                "prompt": spec.text.prompt,
                "negative_prompt": spec.text.negative_prompt,
                "guidance_scale": spec.text.guidance_scale,
            }
        if spec.noise_level is not None:
            summary["noise_level"] = spec.noise_level
        if self.command == "upscale":  # super-resolution's option alone
            summary["back_project"] = spec.back_project
        return summary

    def workdir_bytes(self) -> int:
        """Upper bound of the workdir's size (uncompressed arrays; compression usually shrinks
        it)."""
        out = self.output
        size = out.count * out.width * out.height * np.dtype(out.dtype).itemsize
        ny, nx = self.tile_grid().region_shape
        side = self.grid.region + 2 * self.grid.halo
        if self.diffusion is not None:  # region latents + blended latent, float32
            channels = self.diffusion.latent_channels
            grid = self.tile_grid()
            size += (ny * nx * side * side + grid.width * grid.height) * channels * 4
            if self.diffusion.back_project:  # block means, float32
                size += grid.width * grid.height * out.count * 4
        elif self.grid.halo > 0:  # region pixels, float32
            size += ny * nx * out.count * (side * self.scale) ** 2 * 4
        return size


def _canonical_json(data) -> str:
    import json

    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_plan(
    info: RasterInfo,
    *,
    model: str,
    scale: int,
    context: int,
    bands: tuple[int, ...],
    output: Path,
    output_format: OutputFormat,
    creation_options: dict[str, str],
    tile: int,
    overlap: int,
    region: int,
    halo: int,
    chunk: int,
    diffusion: DiffusionSpec | None = None,
    command: str = "upscale",
    factor: int = 1,
    **task_fields,
) -> Plan:
    """The plan of a run; ``task_fields``: the task's own (``mask``, ``labels``)."""
    transform = tuple(output_transform(info.affine, scale))[:6] if info.georeferenced else None
    return Plan(
        model=model,
        scale=scale,
        bands=bands,
        context=context,
        input=InputSpec.from_info(info),
        grid=GridSpec(tile=tile, overlap=overlap, region=region, halo=halo, chunk=chunk),
        output=OutputSpec(
            path=str(output.absolute()),
            format=output_format,
            creation_options=creation_options,
            dtype=info.dtype,
            nodata=info.nodata,
            width=info.width * scale,
            height=info.height * scale,
            count=len(bands),
            transform=transform,
        ),
        diffusion=diffusion,
        command=command,
        factor=factor,
        **task_fields,
    )


def plan_from_json(text: str) -> Plan:
    return Plan.model_validate_json(text)
