"""Model folders: finding them (a local folder, or a Hugging Face hub id through its cache),
checking their weights (safetensors only unless ``--allow-pickle``: unpickling can run arbitrary
code) and reading what planning needs without loading weights, for both formats:

- a diffusers pipeline folder (``model_index.json``), one of PIPELINES: an
  ``LDMSuperResolutionPipeline`` (unet/, vqvae/, scheduler/: the CompVis 4x model), a
  ``StableDiffusionUpscalePipeline`` (the x4 upscaler) or a ``StableDiffusionInpaintPipeline``
  (both with vae/, text_encoder/, tokenizer/);
- tiler's model-directory format (``tiler.yaml``, tiler/ldm/card.py) for inpainting, synthesis and
  any LDM diffusers has no pipeline for.

A hub id (``owner/name``) goes through the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE`` are honoured). Nothing heavy (torch, diffusers, huggingface_hub) is imported at
module level.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tiler.errors import BadParameter, ModelError, first_line
from tiler.ldm.card import CARD, ModelCard, read_card

DEFAULT_SR_MODEL = "CompVis/ldm-super-resolution-4x-openimages"

# The classical models of tiler/geometry/resample.py (names only: this module stays light).
CLASSICAL_MODELS = ("nearest", "bicubic", "lanczos")

MODEL_ACCEPTED = (
    "expected a Hugging Face hub id (owner/name), a local model directory (with model_index.json), "
    "or a classical model name: " + ", ".join(CLASSICAL_MODELS)
)

# A hub repo id: owner/name, letters, digits, '-', '_', '.'; huggingface_hub validates the details.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

SAFETENSORS_SUFFIX = ".safetensors"

PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")


@dataclass(frozen=True)
class Pipeline:
    """A diffusers pipeline folder layout tiler runs: its components (weights folder -> model
    class), the task it serves, and its text conditioning and defaults."""

    name: str  # the pipeline class (model_index.json's _class_name)
    task: str  # superres or inpaint
    components: dict[str, str]  # folders with weights -> their class
    first_stage: str  # the first stage's folder: vqvae (VQModel) or vae (AutoencoderKL)
    text: bool = False  # a CLIP text encoder and tokenizer: prompts and guidance
    guidance_scale: float | None = None  # the pipeline's default classifier-free guidance
    noise_level: int | None = None  # the low-res augmentation default (the x4 upscaler)

    @property
    def unet_class(self) -> str:
        return self.components["unet"]


SR_PIPELINE = "LDMSuperResolutionPipeline"
UPSCALE_PIPELINE = "StableDiffusionUpscalePipeline"
INPAINT_PIPELINE = "StableDiffusionInpaintPipeline"

_TEXT_COMPONENTS = {
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
}

# Defaults as diffusers' pipelines have them: guidance 9.0 and noise level 20 for the x4 upscaler,
# guidance 7.5 for inpainting.
PIPELINES = {
    pipeline.name: pipeline
    for pipeline in (
        Pipeline(SR_PIPELINE, "superres", {"unet": "UNet2DModel", "vqvae": "VQModel"}, "vqvae"),
        Pipeline(
            UPSCALE_PIPELINE,
            "superres",
            _TEXT_COMPONENTS,
            "vae",
            text=True,
            guidance_scale=9.0,
            noise_level=20,
        ),
        Pipeline(
            INPAINT_PIPELINE, "inpaint", _TEXT_COMPONENTS, "vae", text=True, guidance_scale=7.5
        ),
    )
}

# The x4 upscaler's pipeline config holds its highest noise level (diffusers' default 350).
MAX_NOISE_LEVEL = 350

# The tokenizer folder of a text-conditioned pipeline holds one of these file sets.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


# --- finding the model folder
# ----------------------------------------------------------------------
def resolve_model_dir(model: str, allow_pickle: bool = False) -> Path:
    """The local folder holding ``model``: an existing directory as is (it must hold
    model_index.json or a tiler.yaml card), or the Hugging Face cache snapshot of the hub id
    ``owner/name`` (downloaded when the hub can be reached: json configs and safetensors weights,
    plus ``*.bin`` weights when
    ``allow_pickle``)."""
    text = str(model).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("model_index.json", "tiler.yaml")):
            raise ModelError(
                f"{path}: not a model folder (expected model_index.json or tiler.yaml beside "
                "unet/, vqvae/ and scheduler/ folders)"
            )
        return path
    if path.exists():
        raise BadParameter("model", f"{text!r} is a file, not a model folder; {MODEL_ACCEPTED}")
    if not HUB_ID.fullmatch(text):
        raise BadParameter(
            "model", f"{text!r} is neither a directory nor a hub id; {MODEL_ACCEPTED}"
        )
    return _hub_snapshot(text, allow_pickle)


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    """The cached snapshot folder of ``repo_id``, downloading what is missing if the hub answers."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    # configs, tokenizer files (vocab.json, merges.txt) and weights
    patterns = ["*.json", "*.txt", "*" + SAFETENSORS_SUFFIX] + (["*.bin"] if allow_pickle else [])
    cache = constants.HF_HUB_CACHE
    unreachable = (
        hub_errors.LocalEntryNotFoundError,
        hub_errors.OfflineModeIsEnabled,
        *_optional_errors(hub_errors, "IncompleteSnapshotError"),
        *_connection_errors(),
    )
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns)
    except hub_errors.HFValidationError as error:
        raise BadParameter(
            "model", f"{repo_id!r} is not a valid hub id ({first_line(error)}); {MODEL_ACCEPTED}"
        ) from error
    except hub_errors.GatedRepoError as error:
        raise ModelError(
            f"model {repo_id}: gated on the Hugging Face hub; accept its conditions on "
            "the model page and log in (hf auth login), or pass --model DIR"
        ) from error
    except hub_errors.RepositoryNotFoundError as error:
        raise ModelError(
            f"model {repo_id}: not found on the Hugging Face hub (or private: log in with "
            f"hf auth login), and no local directory of that name; "
            f"{MODEL_ACCEPTED}"
        ) from error
    except unreachable as error:
        offline = " (HF_HUB_OFFLINE is set)" if getattr(constants, "HF_HUB_OFFLINE", False) else ""
        partial = (
            "only partly in"
            if isinstance(error, _optional_errors(hub_errors, "IncompleteSnapshotError"))
            else "not in"
        )
        raise ModelError(
            f"model {repo_id}: {partial} the Hugging Face cache ({cache}) and the hub cannot be "
            f"reached{offline}; download it on a machine with internet (hf download {repo_id} "
            "--local-dir DIR) and pass --model DIR"
        ) from error
    except hub_errors.HfHubHTTPError as error:
        raise ModelError(
            f"model {repo_id}: the Hugging Face hub refused the download: {first_line(error)}"
        ) from error
    except OSError as error:
        raise ModelError(
            f"model {repo_id}: cannot write to the Hugging Face cache ({cache}): "
            f"{first_line(error)}"
        ) from error
    return Path(folder)


def _optional_errors(module, *names: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Network failure classes of the HTTP clients huggingface_hub may use (by version)."""
    found: list[type[BaseException]] = []
    for module_name, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        found.extend(_optional_errors(module, *names))
    return tuple(found)


# --- checking the folder
# ---------------------------------------------------------------------------
def check_weights(
    model_dir, components: Iterable[str], allow_pickle: bool = False
) -> dict[str, Path]:
    """The weights file of each component folder (the first shard if sharded): safetensors
    preferred; pickle weights (``*.bin``, ``*.pt``, ``*.ckpt``, ``*.pth``) only when
    ``allow_pickle``. Raises ModelError for a missing folder, pickle-only weights or no weights."""
    model_dir = Path(model_dir)
    found: dict[str, Path] = {}
    for component in components:
        folder = model_dir / component
        if not folder.is_dir():
            raise ModelError(
                f"{folder}: missing (expected a {component} folder with config.json and "
                "*.safetensors weights)"
            )
        safe = sorted(folder.glob("*" + SAFETENSORS_SUFFIX))
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if safe:
            found[component] = safe[0]
        elif pickles and allow_pickle:
            found[component] = pickles[0]
        elif pickles:
            raise ModelError(
                f"{folder}: weights are a pickle file ({pickles[0].name}), which can run "
                "arbitrary code when loaded; convert them to safetensors or pass --allow-pickle"
            )
        else:
            hint = (
                "" if allow_pickle else "; pickle weights (*.bin) are used only with --allow-pickle"
            )
            raise ModelError(f"{folder}: no weights (expected *.safetensors{hint})")
    return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ModelError(f"{path}: missing") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not readable JSON ({first_line(error)})") from error
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def check_pipeline_layout(model_dir) -> Pipeline:
    """The pipeline of a diffusers folder, read from model_index.json and checked: a layout tiler
    runs (PIPELINES), each component folder's config of the declared class, and a tokenizer beside
    a text encoder. A folder without ``_class_name`` is recognised by its components. Raises
    ModelError naming what was found."""
    model_dir = Path(model_dir)
    index_path = model_dir / "model_index.json"
    index = _read_json(index_path)
    pipeline = PIPELINES.get(index.get("_class_name")) or _pipeline_by_components(index)
    if pipeline is None:
        found = index.get("_class_name") or "pipeline without _class_name"
        raise ModelError(
            f"{index_path}: a {found}; expected one of {', '.join(PIPELINES)} (or tiler's "
            "model-directory format, a tiler.yaml card)"
        )
    for component, class_name in pipeline.components.items():
        if not (model_dir / component).is_dir():
            raise ModelError(
                f"{model_dir / component}: missing (a {pipeline.name} needs its {component}, "
                f"a {class_name})"
            )
        config_path = model_dir / component / "config.json"
        config = _read_json(config_path)
        found = config.get("_class_name") or (config.get("architectures") or [class_name])[0]
        if found != class_name:
            raise ModelError(f"{config_path}: a {found}; expected a {class_name}")
    if pipeline.text:
        check_tokenizer(model_dir / "tokenizer")
    return pipeline


def _pipeline_by_components(index: dict) -> Pipeline | None:
    """The one pipeline whose components model_index.json declares (a folder saved without
    ``_class_name``), or None."""
    declared = {name: (value or [None, None])[-1] for name, value in index.items()}
    matches = [
        pipeline
        for pipeline in PIPELINES.values()
        if all(declared.get(name) == cls for name, cls in pipeline.components.items())
        and ("low_res_scheduler" in declared) == (pipeline.name == UPSCALE_PIPELINE)
    ]
    return matches[0] if len(matches) == 1 else None


def check_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer folder: tokenizer.json, or vocab.json with merges.txt."""
    if not folder.is_dir():
        raise ModelError(
            f"{folder}: missing (a text-conditioned model needs its CLIP tokenizer: "
            "tokenizer.json, or vocab.json and merges.txt)"
        )
    if not any(all((folder / name).is_file() for name in files) for files in TOKENIZER_FILES):
        raise ModelError(
            f"{folder}: no tokenizer files (expected tokenizer.json, or vocab.json and merges.txt)"
        )


def read_pipeline_config(model_dir) -> dict:
    """``model_index.json`` of a diffusers folder ({} for tiler's format)."""
    path = Path(model_dir) / "model_index.json"
    return _read_json(path) if path.is_file() else {}


def read_scheduler_config(model_dir) -> dict:
    """``model_dir/scheduler/scheduler_config.json`` as a dict."""
    return _read_json(Path(model_dir) / "scheduler" / "scheduler_config.json")


def first_stage_factor(config: dict) -> int:
    """Input px per latent px of a first stage (VQModel or AutoencoderKL config): it halves the
    image once per block but the last."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def tile_multiple(unet_config: dict) -> int:
    """Latent tiles must be a multiple of this for the UNet's downsamplings."""
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def is_tiler_folder(model_dir: Path) -> bool:
    """tiler's model-directory format (a tiler.yaml card), or else a diffusers pipeline folder."""
    return (Path(model_dir) / CARD).is_file() and not (
        Path(model_dir) / "model_index.json"
    ).is_file()


@dataclass(frozen=True)
class ModelFolder:
    """What planning needs of a model folder of either format, read without loading weights."""

    path: Path
    card: ModelCard | None  # None: a diffusers pipeline folder
    pipeline: Pipeline | None  # None: tiler's model-directory format
    weights: dict  # component -> its (first) weights file
    first_stage: dict  # the first stage's config
    unet: dict  # the UNet's config
    pipeline_config: dict  # model_index.json ({} for tiler's format)

    @property
    def factor(self) -> int:
        """Input px per latent px: the first stage's downsampling."""
        return first_stage_factor(self.first_stage)

    @property
    def tile_multiple(self) -> int:
        return tile_multiple(self.unet)

    @property
    def latent_channels(self) -> int:
        return int(self.first_stage["latent_channels"])

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning concatenated after the latent."""
        return int(self.unet["in_channels"]) - self.latent_channels

    @property
    def kind(self) -> str:
        """How messages name the model's layout: its pipeline class or tiler's format."""
        return self.pipeline.name if self.pipeline else f"tiler {self.card.task} model"

    @property
    def text_conditioned(self) -> bool:
        return bool(self.pipeline and self.pipeline.text)

    @property
    def max_noise_level(self) -> int | None:
        """The highest low-res noise level (the x4 upscaler); None for models without one."""
        if not self.pipeline or self.pipeline.noise_level is None:
            return None
        return int(self.pipeline_config.get("max_noise_level", MAX_NOISE_LEVEL))


def inspect_model(model: str, task: str, allow_pickle: bool = False) -> ModelFolder:
    """The folder of ``model`` (a path or hub id), checked to hold a ``task`` model: a diffusers
    pipeline folder (PIPELINES: LDM-SR and the x4 upscaler for superres, Stable Diffusion
    inpainting for inpaint) or tiler's format (inpaint, synthesis)."""
    model_dir = resolve_model_dir(model, allow_pickle=allow_pickle)
    if is_tiler_folder(model_dir):
        card, pipeline = read_card(model_dir), None
        found, components, first = card.task, ("unet", card.first_stage), card.first_stage
    else:
        card, pipeline = None, check_pipeline_layout(model_dir)
        found, components, first = pipeline.task, tuple(pipeline.components), pipeline.first_stage
    if found != task:
        raise BadParameter(
            "model",
            f"{model} is {_article(found)} {found} model ({pipeline.name if pipeline else CARD}); "
            f"expected {_article(task)} {task} model",
        )
    weights = check_weights(model_dir, components, allow_pickle=allow_pickle)
    return ModelFolder(
        path=model_dir,
        card=card,
        pipeline=pipeline,
        weights=weights,
        first_stage=_read_json(model_dir / first / "config.json"),
        unet=_read_json(model_dir / "unet" / "config.json"),
        pipeline_config=read_pipeline_config(model_dir),
    )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
