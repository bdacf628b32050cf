"""The workflow schema (pydantic): keys are the CLI's option names, unknown keys are errors.

```yaml
inputs: ["scans/*.tif"]            # paths or globs, relative to the workflow file
inputs-from: more-scans.txt        # and/or a file listing one path per line
defaults: {device: cuda}           # shared by every step whose task takes the key
cluster: {cluster: local}          # as --cluster, --scheduler, --workers, --retries
steps:
  - name: up
    task: upscale                  # upscale | inpaint | synthesize | export
    model: nearest
    scale: 4
    output: "out/{stem}_x4.tif"    # {stem} {name} {input_dir} {step}
  - name: cog
    task: export                   # consumes the previous step's output (or input: STEP / inputs)
    format: COG
    output: "out/{stem}_x4_cog.tif"
```
"""

from __future__ import annotations

import string
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tiler.execution.cluster import ExecutionOptions
from tiler.ldm.folders import DEFAULT_SR_MODEL

TEMPLATE_FIELDS = ("stem", "name", "input_dir", "step")
INPUTS = "inputs"  # ``input: inputs``: a step reading the workflow's input file
TASKS = ("upscale", "inpaint", "synthesize", "export")


def check_template(value: str | None) -> str | None:
    """A path template (output, workdir, mask, classes) may use only TEMPLATE_FIELDS."""
    if value is None:
        return value
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid template ({exc})") from None
    unknown = [name for name in names if name not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown template field {{{unknown[0]}}} in {value!r}; expected "
            + ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
        )
    return value


def _cli_name(name: str) -> str:
    return name.replace("_", "-")


STRICT = ConfigDict(extra="forbid", frozen=True, alias_generator=_cli_name)


class StepBase(BaseModel):
    model_config = STRICT

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    input: str | None = None  # an earlier step's name, or "inputs"; default: the previous step
    output: str
    workdir: str | None = None
    keep_workdir: bool = False
    # how the output is written (the --bidx, --format, --co of the CLI)
    bidx: str | None = None
    format: Literal["GTiff", "COG", "Zarr"] | None = None
    co: dict[str, str] = Field(default_factory=dict)

    @field_validator("output", "workdir", "mask", "classes", check_fields=False)
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        """Path templates; ``mask`` (inpaint) and ``classes`` (synthesize) are their steps' own."""
        return check_template(value)

    @field_validator("co", mode="before")
    @classmethod
    def _creation_options(cls, value: Any) -> Any:
        """``co`` as a mapping, or as the CLI's list of NAME=VALUE."""
        if isinstance(value, list):
            options = {}
            for item in value:
                key, sep, option = str(item).partition("=")
                if not sep or not key:
                    raise ValueError(f"{item!r} is not NAME=VALUE, e.g. COMPRESS=ZSTD")
                options[key] = option
            return options
        if isinstance(value, dict):
            return {str(key).upper(): str(option) for key, option in value.items()}
        return value

    @field_validator("bidx", mode="before")
    @classmethod
    def _bands(cls, value: Any) -> Any:
        """``bidx: [3, 2, 1]`` or ``"3,2,1"`` (or one band, ``2``)."""
        if isinstance(value, list):
            return ",".join(str(band) for band in value)
        return str(value) if isinstance(value, int) else value


class ExportStep(StepBase):
    task: Literal["export"]


class SamplingKeys(BaseModel):
    """The LDM options shared by the generative steps (the CLI's flags of the same names)."""

    tile: int | None = Field(default=None, ge=1)
    overlap: int | None = Field(default=None, ge=0)
    region: int | None = Field(default=None, ge=1)
    halo: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=1)
    eta: float | None = Field(default=None, ge=0)
    seed: int | None = None
    sampler: str | None = None
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    range: str | None = None
    decode_tile: int | None = Field(default=None, ge=1)
    decode_halo: int | None = Field(default=None, ge=0)
    decode_norm: Literal["auto", "window", "shared"] | None = None
    allow_pickle: bool = False
    batch_size: int | None = Field(default=None, ge=1)
    compile: bool = False
    threads: int | None = Field(default=None, ge=1)  # torch threads per model worker (CPU)

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        """``range: [0, 3000]`` or ``"0,3000"``."""
        if isinstance(value, list) and len(value) == 2:
            return f"{value[0]},{value[1]}"
        return value


class TextKeys(BaseModel):
    """Prompts and guidance of text-conditioned models (Stable Diffusion pipelines); a prompt is
    a template like output ("{stem}" is the input file's stem; a literal brace is written twice)."""

    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = Field(default=None, ge=1)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_template(cls, value: str | None) -> str | None:
        return check_template(value)


class UpscaleStep(StepBase, SamplingKeys, TextKeys):
    task: Literal["upscale"]
    model: str = DEFAULT_SR_MODEL
    scale: int | None = Field(default=None, ge=1, le=16)
    back_project: bool | None = None  # LDM super-resolution alone; None: the CLI's default
    noise_level: int | None = Field(default=None, ge=0)  # the x4 upscaler alone

    @property
    def uses_model(self) -> bool:
        from tiler.geometry.resample import KERNELS

        return self.model not in KERNELS


class InpaintStep(StepBase, SamplingKeys, TextKeys):
    task: Literal["inpaint"]
    model: str
    mask: str | None = None  # a template, like output: e.g. "masks/{stem}_clouds.tif"
    mask_nodata: bool = False
    mask_band: int | None = Field(default=None, ge=1)
    dilate: int = Field(default=0, ge=0)
    uses_model: ClassVar[bool] = True  # an LDM step, as an upscale step with an LDM model

    @model_validator(mode="after")
    def _one_mask(self) -> InpaintStep:
        given = [
            key
            for key, value in (
                ("mask", self.mask),
                ("mask-nodata", self.mask_nodata),
                ("mask-band", self.mask_band),
            )
            if value
        ]
        if len(given) != 1:
            raise ValueError(
                f"steps with task inpaint need exactly one of mask, mask-nodata, "
                f"mask-band; got {', '.join(given) or 'none'}"
            )
        return self


class SynthesizeStep(StepBase, SamplingKeys):
    task: Literal["synthesize"]
    model: str
    classes: str | None = None  # a template, like output: e.g. "{input_dir}/legend.yaml"
    uses_model: ClassVar[bool] = True

    @model_validator(mode="after")
    def _no_range(self) -> SynthesizeStep:
        if self.range is not None:
            raise ValueError(
                "steps with task synthesize take no range: labels are class ids and "
                "the output is 8-bit RGB"
            )
        return self


Step = Annotated[
    Union[UpscaleStep, InpaintStep, SynthesizeStep, ExportStep], Field(discriminator="task")
]
STEP_CLASSES = {
    "upscale": UpscaleStep,
    "inpaint": InpaintStep,
    "synthesize": SynthesizeStep,
    "export": ExportStep,
}


def step_keys(task: str) -> set[str]:
    return {_cli_name(name) for name in STEP_CLASSES[task].model_fields}


class Workflow(BaseModel):
    model_config = STRICT

    inputs: list[str] = Field(default_factory=list)
    inputs_from: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)  # merged into the steps before this
    cluster: ExecutionOptions | None = None
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Workflow:
        if not self.inputs and not self.inputs_from:
            raise ValueError("no inputs: give inputs (paths or globs) or inputs-from (a list file)")
        seen = []
        for index, step in enumerate(self.steps):
            if step.name in seen:
                raise ValueError(
                    f"steps[{index}].name: {step.name!r} is used by an earlier step; "
                    "step names must be unique"
                )
            if step.input not in (None, INPUTS, *seen):
                raise ValueError(
                    f"steps[{index}].input: {step.input!r} is not an earlier step; "
                    f"expected one of {[INPUTS, *seen]}"
                )
            seen.append(step.name)
        return self

    def source_of(self, index: int) -> int | None:
        """The index of the step whose output step ``index`` reads (None: the workflow input)."""
        step = self.steps[index]
        if step.input == INPUTS or (step.input is None and index == 0):
            return None
        if step.input is None:
            return index - 1
        return [s.name for s in self.steps].index(step.input)
