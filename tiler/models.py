"""Loading the LDM super-resolution model from a hub id or a local directory.

The model is a diffusers ``LDMSuperResolutionPipeline`` folder::

    model_index.json
    unet/       UNet2DModel: latent ++ low-res image in, noise prediction out
    vqvae/      VQModel: the first stage (f = 4 for the CompVis 4x model)
    scheduler/  the training noise schedule (DDIMScheduler for the CompVis model)

Weights are loaded from safetensors only, unless the caller allows pickle files (``--allow-pickle``):
unpickling can run arbitrary code. A hub id (``owner/name``) goes through the Hugging Face cache
(``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` are honoured; huggingface_hub reads them when it is
first imported). Nothing heavy (torch, diffusers, huggingface_hub) is imported at module level.

Samplers: tiler ties every random number to a pixel position (keyed noise, ``tiler/noise.py``), so it
accepts only diffusers schedulers whose ``step`` is deterministic or takes its noise as the
``variance_noise`` argument; ancestral samplers that draw their own noise are refused.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .errors import BadParameter, TilerError, first_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("tiler")

DEFAULT_SR_MODEL = "CompVis/ldm-super-resolution-4x-openimages"

# The classical models of tiler/resample.py (kept here as names so this module stays light).
CLASSICAL_MODELS = ("nearest", "bicubic", "lanczos")

MODEL_ACCEPTED = (
    "expected a Hugging Face hub id (owner/name), a local model directory (with model_index.json), "
    "or a classical model name: " + ", ".join(CLASSICAL_MODELS)
)

# A hub repo id: owner/name, letters, digits, '-', '_', '.'; huggingface_hub validates the details.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")

SR_PIPELINE = "LDMSuperResolutionPipeline"
SR_COMPONENTS = {"unet": "UNet2DModel", "vqvae": "VQModel"}

DTYPES = ("float32", "float16", "bfloat16")

# Short sampler names -> diffusers scheduler class names (plus config overrides in SAMPLER_OPTIONS).
SAMPLERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++-sde": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
}
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "dpm++": {"algorithm_type": "dpmsolver++"},
    "dpm++-sde": {"algorithm_type": "sde-dpmsolver++"},
}
# Well-known names of samplers that draw their own noise at each step (refused with a reason).
REFUSED_SAMPLERS: dict[str, str] = {
    "euler-a": "EulerAncestralDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
    "dpm2-a": "KDPM2AncestralDiscreteScheduler",
    "dpm-sde": "DPMSolverSDEScheduler",
}
# Schedulers whose step draws noise only for the SDE algorithm types of their config.
_NOISE_ONLY_FOR_SDE = ("DPMSolverSinglestepScheduler",)

SAMPLERS_ACCEPTED = (
    "accepted: " + ", ".join(SAMPLERS)
    + ", or a diffusers scheduler class name that fits the model (e.g. DEISMultistepScheduler)"
)


class ModelError(TilerError):
    """The model cannot be found, is not the kind of model expected, holds unsafe (pickle) weights,
    or fails to load (exit 1)."""


# --- finding the model folder ----------------------------------------------------------------------
def resolve_model_dir(model: str, allow_pickle: bool = False) -> Path:
    """The local folder holding ``model``: an existing directory as is (it must hold
    model_index.json or a tiler.yaml card), or the Hugging Face cache snapshot of the hub id ``owner/name`` (downloaded
    when the hub can be reached: json configs and safetensors weights, plus ``*.bin`` weights when
    ``allow_pickle``)."""
    text = str(model).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("model_index.json", "tiler.yaml")):
            raise ModelError(
                f"{path}: not a model folder (expected model_index.json or tiler.yaml beside unet/, "
                "vqvae/ and scheduler/ folders)"
            )
        return path
    if path.exists():
        raise BadParameter("--model", f"{text!r} is a file, not a model folder; {MODEL_ACCEPTED}")
    if not HUB_ID.fullmatch(text):
        raise BadParameter("--model", f"{text!r} is neither a directory nor a hub id; {MODEL_ACCEPTED}")
    return _hub_snapshot(text, allow_pickle)


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    """The cached snapshot folder of ``repo_id``, downloading what is missing if the hub answers."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    patterns = ["*.json", "*" + SAFETENSORS_SUFFIX] + (["*.bin"] if allow_pickle else [])
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
        raise BadParameter("--model", f"{repo_id!r} is not a valid hub id ({first_line(error)}); "
                           f"{MODEL_ACCEPTED}") from error
    except hub_errors.GatedRepoError as error:
        raise ModelError(f"model {repo_id}: gated on the Hugging Face hub; accept its conditions on "
                         "the model page and log in (hf auth login), or pass --model DIR") from error
    except hub_errors.RepositoryNotFoundError as error:
        raise ModelError(f"model {repo_id}: not found on the Hugging Face hub (or private: log in with "
                         f"hf auth login), and no local directory of that name; "
                         f"{MODEL_ACCEPTED}") from error
    except unreachable as error:
        offline = " (HF_HUB_OFFLINE is set)" if getattr(constants, "HF_HUB_OFFLINE", False) else ""
        partial = ("only partly in" if isinstance(error, _optional_errors(hub_errors, "IncompleteSnapshotError"))
                   else "not in")
        raise ModelError(
            f"model {repo_id}: {partial} the Hugging Face cache ({cache}) and the hub cannot be "
            f"reached{offline}; download it on a machine with internet (hf download {repo_id} "
            "--local-dir DIR) and pass --model DIR"
        ) from error
    except hub_errors.HfHubHTTPError as error:
        raise ModelError(f"model {repo_id}: the Hugging Face hub refused the download: "
                         f"{first_line(error)}") from error
    except OSError as error:
        raise ModelError(f"model {repo_id}: cannot write to the Hugging Face cache ({cache}): "
                         f"{first_line(error)}") from error
    return Path(folder)


def _optional_errors(module, *names: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Network failure classes of the HTTP clients huggingface_hub may use (by version)."""
    found: list[type[BaseException]] = []
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        found.extend(_optional_errors(module, *names))
    return tuple(found)



# --- checking the folder ---------------------------------------------------------------------------
def check_weights(model_dir, components: Iterable[str] = tuple(SR_COMPONENTS),
                  allow_pickle: bool = False) -> dict[str, Path]:
    """The weights file of each component folder (the first shard if sharded): safetensors
    preferred; pickle weights (``*.bin``, ``*.pt``, ``*.ckpt``, ``*.pth``) only when
    ``allow_pickle``. Raises ModelError for a missing folder, pickle-only weights or no weights."""
    model_dir = Path(model_dir)
    found: dict[str, Path] = {}
    for component in components:
        folder = model_dir / component
        if not folder.is_dir():
            raise ModelError(f"{folder}: missing (expected a diffusers {component} folder with "
                             "config.json and *.safetensors weights)")
        safe = sorted(folder.glob("*" + SAFETENSORS_SUFFIX))
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if safe:
            found[component] = safe[0]
        elif pickles and allow_pickle:
            found[component] = pickles[0]
        elif pickles:
            raise ModelError(
                f"{folder}: weights are a pickle file ({pickles[0].name}), which can run arbitrary code "
                "when loaded; convert them to safetensors or pass --allow-pickle"
            )
        else:
            hint = "" if allow_pickle else "; pickle weights (*.bin) are used only with --allow-pickle"
            raise ModelError(f"{folder}: no weights (expected diffusion_pytorch_model.safetensors{hint})")
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


def check_sr_layout(model_dir) -> None:
    """Refuse a folder that is not an LDM super-resolution pipeline (model_index.json naming
    LDMSuperResolutionPipeline, or a UNet2DModel unet and a VQModel vqvae)."""
    model_dir = Path(model_dir)
    index = _read_json(model_dir / "model_index.json")
    declared = {name: (index.get(name) or [None, None])[-1] for name in SR_COMPONENTS}
    if index.get("_class_name") != SR_PIPELINE and declared != SR_COMPONENTS:
        found = index.get("_class_name") or "pipeline without _class_name"
        raise ModelError(
            f"{model_dir / 'model_index.json'}: a {found}; expected an {SR_PIPELINE} "
            "(unet: UNet2DModel, vqvae: VQModel, scheduler)"
        )
    for component, class_name in SR_COMPONENTS.items():
        config = _read_json(model_dir / component / "config.json")
        if config.get("_class_name", class_name) != class_name:
            raise ModelError(f"{model_dir / component / 'config.json'}: a {config['_class_name']}; "
                             f"expected a {class_name}")


def read_scheduler_config(model_dir) -> dict:
    """``model_dir/scheduler/scheduler_config.json`` as a dict."""
    return _read_json(Path(model_dir) / "scheduler" / "scheduler_config.json")


# --- samplers --------------------------------------------------------------------------------------
def check_sampler(sampler: str) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config overrides) for a short sampler name or a class name; raises
    BadParameter for unknown names and for samplers known to draw their own noise. Whether a class
    name fits a given model is checked by ``scheduler_from_config``."""
    text = str(sampler).strip()
    short = text.lower()
    if short in SAMPLERS:
        return SAMPLERS[short], dict(SAMPLER_OPTIONS.get(short, {}))
    if short in REFUSED_SAMPLERS:
        raise _refuse_sampler(text, REFUSED_SAMPLERS[short])
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*Scheduler", text):
        return text, {}
    raise BadParameter("--sampler", f"unknown sampler {text!r}; {SAMPLERS_ACCEPTED}")


def _refuse_sampler(name: str, class_name: str) -> BadParameter:
    shown = repr(name) if name == class_name else f"{name!r} ({class_name})"
    return BadParameter(
        "--sampler",
        f"{shown} draws its own random noise at each step, but tiler ties all noise to pixel "
        f"positions (keyed noise) so that tiles agree; {SAMPLERS_ACCEPTED}",
    )


def draws_own_noise(scheduler_class: type, config) -> bool:
    """Whether ``scheduler_class.step`` (with ``config``) injects random noise it draws itself
    instead of taking it as ``variance_noise``: such steps cannot use keyed noise."""
    params = inspect.signature(scheduler_class.step).parameters
    if "variance_noise" in params or "generator" not in params:
        return False
    churn = params.get("s_churn")
    if churn is not None and churn.default == 0:  # Euler-style: noise only when s_churn > 0
        return False
    if scheduler_class.__name__ in _NOISE_ONLY_FOR_SDE:
        return str(dict(config).get("algorithm_type", "")).startswith("sde")
    return True


def step_accepts_noise(scheduler) -> bool:
    """Whether ``scheduler.step`` takes ``variance_noise``: the sampling loop must then pass keyed
    noise (DDIM with eta > 0, SDE variants of DPM-Solver++) or the scheduler would draw its own."""
    return "variance_noise" in inspect.signature(scheduler.step).parameters


def scheduler_from_config(config: dict, sampler: str = "ddim"):
    """A diffusers scheduler for ``sampler`` built ``from_config`` of the model's scheduler config.
    Refuses (BadParameter) unknown names, classes that do not fit the model's scheduler (not in its
    ``_compatibles``) and samplers that draw their own noise."""
    class_name, options = check_sampler(sampler)
    import diffusers.schedulers as schedulers

    try:  # diffusers gives placeholders for classes whose optional dependency (torchsde) is missing
        scheduler_class = getattr(schedulers, class_name, None)
        usable = (isinstance(scheduler_class, type) and hasattr(scheduler_class, "from_config")
                  and hasattr(scheduler_class, "step"))
    except ImportError as error:
        raise BadParameter("--sampler", f"{sampler!r} needs a missing package: "
                           f"{first_line(error)}; {SAMPLERS_ACCEPTED}") from error
    if not usable:
        raise BadParameter("--sampler", f"unknown sampler {sampler!r}; {SAMPLERS_ACCEPTED}")
    base_name = config.get("_class_name")
    base_class = getattr(schedulers, base_name, None) if base_name else None
    compatible = {base_name} | {getattr(c, "__name__", str(c))
                                for c in getattr(base_class, "_compatibles", ())}
    if base_class is not None and class_name not in compatible:
        raise BadParameter("--sampler", f"{sampler!r} does not fit this model's {base_name} noise "
                           f"schedule; {SAMPLERS_ACCEPTED}")
    if draws_own_noise(scheduler_class, {**config, **options}):
        raise _refuse_sampler(str(sampler), class_name)
    return scheduler_class.from_config(config, **options)


def make_scheduler(model_dir, sampler: str = "ddim"):
    """The scheduler for ``sampler`` built from ``model_dir/scheduler`` (see scheduler_from_config)."""
    return scheduler_from_config(read_scheduler_config(model_dir), sampler)


# --- devices and dtypes ----------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> "torch.device":
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device;
    BadParameter("--device") for a GPU this machine does not have."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise BadParameter("--device", f"{device!r}; expected auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
        raise BadParameter("--device", f"{device!r}: no CUDA GPU is available here ({build}); "
                           "use cpu or auto")
    index = int(match.group(1) or 0)
    if index >= count:
        raise BadParameter("--device", f"{device!r}: this machine has {count} CUDA GPU(s), "
                           f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | None, device: "torch.device") -> "torch.dtype":
    """The compute dtype: ``None`` gives float32 on CPU and bfloat16 on CUDA (float32 on GPUs
    without bfloat16); otherwise one of float32, float16, bfloat16."""
    import torch

    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float32
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise BadParameter("--dtype", f"{dtype!r}; expected one of {', '.join(DTYPES)}")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadParameter("--dtype", f"bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                           "use float16 or float32")
    if name != "float32" and device.type == "cpu":
        log.warning("--dtype %s on CPU is slower and less precise than float32, which is "
                    "recommended there", name)
    return getattr(torch, name)


# --- the model -------------------------------------------------------------------------------------
@dataclass(eq=False)
class SRModel:
    """A loaded LDM super-resolution model: UNet (latent ++ low-res image -> noise prediction) and
    VQ first stage, in eval mode without gradients, on ``device`` in ``dtype``."""

    unet: Any
    vqvae: Any
    scheduler_config: dict
    model_dir: Path
    device: "torch.device"
    dtype: "torch.dtype"
    name: str = ""

    @property
    def scale(self) -> int:
        """Pixel size of one latent px (f): 4 for the CompVis model; also the upscale factor, as the
        latent grid is the low-resolution pixel grid."""
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vqvae.config.latent_channels)

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning (the low-res image) concatenated after the latent."""
        return int(self.unet.config.in_channels) - self.latent_channels

    def make_scheduler(self, sampler: str = "ddim"):
        """A fresh scheduler for ``sampler`` (schedulers hold per-run state: one per region)."""
        return scheduler_from_config(self.scheduler_config, sampler)


def load_sr_model(model: str, device: str = "auto", dtype: str | None = None,
                  allow_pickle: bool = False) -> SRModel:
    """Load an LDMSuperResolutionPipeline (hub id or local folder) for inference on ``device``.
    On CPU the UNet and the VQ model are made batch invariant and oneDNN is switched off
    (process-wide), so a tile's result does not depend on how tiles are batched; the UNet must then
    be called with one timestep per call (see make_batch_invariant)."""
    # 1. check the cheap things first: device, dtype, then the folder and its weights
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_dir = resolve_model_dir(model, allow_pickle=allow_pickle)
    check_sr_layout(model_dir)
    weights = check_weights(model_dir, SR_COMPONENTS, allow_pickle=allow_pickle)
    scheduler_config = read_scheduler_config(model_dir)
    # 2. load the weights, check the channel layout, make CPU batch invariant
    return _load_components(model_dir, weights, scheduler_config, torch_device, torch_dtype, str(model))


def load_ldm_model(model_dir, device: str = "auto", dtype: str | None = None,
                   allow_pickle: bool = False) -> SRModel:
    """Load a model in tiler's model-directory format (``tiler.yaml``, see tiler/model_card.py)
    with a VQ first stage; the same checks, placement and CPU batch invariance as LDM-SR."""
    from .model_card import read_card

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    if card.first_stage != "vqvae":
        raise ModelError(f"{model_dir / 'tiler.yaml'}: first-stage {card.first_stage!r} is not "
                         "supported yet; expected 'vqvae'")
    weights = check_weights(model_dir, SR_COMPONENTS, allow_pickle=allow_pickle)
    return _load_components(model_dir, weights, read_scheduler_config(model_dir), torch_device,
                            torch_dtype, str(model_dir))


def _load_components(model_dir: Path, weights: dict[str, Path], scheduler_config: dict,
                     torch_device, torch_dtype, name: str) -> SRModel:
    """Load unet and vqvae, check their channel layout, make them batch invariant on CPU."""
    import torch
    from diffusers import UNet2DModel, VQModel
    from diffusers.utils import is_accelerate_available

    loaded = {}
    for component, model_class in (("unet", UNet2DModel), ("vqvae", VQModel)):
        folder = model_dir / component
        try:
            module = model_class.from_pretrained(
                folder, use_safetensors=weights[component].suffix == SAFETENSORS_SUFFIX,
                torch_dtype=torch_dtype, low_cpu_mem_usage=is_accelerate_available())
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelError(f"{folder}: cannot load a {model_class.__name__}: {first_line(error)}") from error
        if component == "unet":  # a converted CompVis UNet may fix its attention heads
            from .convert.config import restore_attention_heads

            restore_attention_heads(module)
        module.eval().requires_grad_(False)
        module.to(torch_device)
        if torch_device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        loaded[component] = module

    sr = SRModel(unet=loaded["unet"], vqvae=loaded["vqvae"], scheduler_config=scheduler_config,
                 model_dir=model_dir, device=torch_device, dtype=torch_dtype, name=name)

    # the channel layout: UNet input = latent ++ conditioning, output = latent
    unet_config = sr.unet.config
    if unet_config.out_channels != sr.latent_channels or sr.cond_channels < 1:
        raise ModelError(
            f"{model_dir / 'unet'}: in_channels {unet_config.in_channels}, out_channels "
            f"{unet_config.out_channels} do not fit the VQ model's {sr.latent_channels} latent channels "
            "(expected in = latent + conditioning channels, out = latent channels)")

    # CPU: a tile's result independent of how tiles are batched (UNet steps and VQ decodes)
    if torch_device.type == "cpu":
        enable_cpu_determinism()
        make_batch_invariant(sr.unet)
        make_batch_invariant(sr.vqvae)
    return sr


# --- batch invariance on CPU -----------------------------------------------------------------------
def enable_cpu_determinism() -> None:
    """Switch oneDNN (mkldnn) off, process-wide: its CPU convolution kernels pick algorithms by
    batch size, so a sample's result would depend on its batch. Costs CPU conv speed."""
    import torch

    torch.backends.mkldnn.enabled = False


def make_batch_invariant(module):
    """Make ``module``'s per-sample results independent of batch size on CPU, bit for bit (with
    ``enable_cpu_determinism``). In place; returns the module; calling it twice is harmless.

    (a) ``time_embedding`` and every resnet ``time_emb_proj`` run on row 0 only, expanded to the
        batch. CONTRACT: the UNet is called with ONE timestep per call (tiler steps a whole region's
        tiles in lockstep), so all rows of the time embedding are equal; a batch mixing timesteps
        raises ValueError (checked on CPU).
    (b) every ``torch.nn.GroupNorm`` is replaced by a group norm computed with ``torch.var_mean``
        over each (sample, group) row (same parameters).
    (c) every ``Conv2d`` gets its input made contiguous (a forward pre-hook).
    """
    import torch

    first_row_broadcast, var_mean_group_norm = batch_invariant_modules()
    if getattr(module, "_tiler_batch_invariant", False):
        return module
    # (a) time embedding and its projections: row 0 only
    if isinstance(getattr(module, "time_embedding", None), torch.nn.Module):
        module.time_embedding = first_row_broadcast(module.time_embedding)
    for sub in list(module.modules()):
        projection = getattr(sub, "time_emb_proj", None)
        if isinstance(projection, torch.nn.Module) and not isinstance(projection, first_row_broadcast):
            sub.time_emb_proj = first_row_broadcast(projection)
    # (b) group norms
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(parent, name, var_mean_group_norm(child))
    # (c) contiguous conv inputs
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            sub.register_forward_pre_hook(_contiguous_input)
    module._tiler_batch_invariant = True
    return module


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


@functools.cache
def batch_invariant_modules() -> tuple[type, type]:
    """The module classes make_batch_invariant inserts: (FirstRowBroadcast, VarMeanGroupNorm)
    (defined on first use: torch is imported lazily)."""
    import torch

    class FirstRowBroadcast(torch.nn.Module):
        """Runs ``inner`` on row 0 of its input and expands the result to the batch: valid when all
        rows are equal (one timestep per UNet call), and independent of the batch size."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x, *args, **kwargs):
            if x.device.type == "cpu" and x.shape[0] > 1 and not torch.equal(x, x[:1].expand_as(x)):
                raise ValueError("a batch-invariant UNet takes one timestep per call: the rows of "
                                 "its time embedding differ")
            out = self.inner(x[:1], *args, **kwargs)
            return out.expand(x.shape[0], *out.shape[1:])

    class VarMeanGroupNorm(torch.nn.Module):
        """GroupNorm computed per (sample, group) row with ``torch.var_mean``: the same result for a
        sample whatever the batch size (torch's CPU group norm kernel splits its reductions by
        batch). Keeps the original module's weight and bias."""

        def __init__(self, norm: torch.nn.GroupNorm):
            super().__init__()
            self.num_groups = norm.num_groups
            self.num_channels = norm.num_channels
            self.eps = norm.eps
            self.affine = norm.affine
            self.weight = norm.weight
            self.bias = norm.bias

        def forward(self, x):
            n = x.shape[0]
            rows = x.reshape(n * self.num_groups, -1)
            low_precision = rows.dtype in (torch.float16, torch.bfloat16)
            if low_precision:
                rows = rows.float()
            var, mean = torch.var_mean(rows, dim=1, unbiased=False, keepdim=True)
            out = ((rows - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape).to(x.dtype)
            if self.affine:
                shape = (1, self.num_channels) + (1,) * (x.dim() - 2)
                out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
            return out

        def extra_repr(self):
            return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    return FirstRowBroadcast, VarMeanGroupNorm
