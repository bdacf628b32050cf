"""The loaded model as the sampler and the first-stage passes call it (``ModelRunner``): device
placement, dtype, channels_last, optional torch.compile, inference mode, shared GroupNorm
statistics, one scheduler per region; loaded once per process for consecutive runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tiler.ldm import norm_stats
from tiler.ldm.options import BATCH_SIZES, RuntimeOptions
from tiler.workdir.plan import Plan


class ModelRunner:
    """The loaded model as the sampler and the decoder call it: device placement, dtype,
    channels_last, optional torch.compile, inference mode, one scheduler per region."""

    def __init__(
        self,
        model,
        sampler: str,
        compile: bool,
        shared_norm: bool = False,
        allow_pickle: bool = False,
    ):
        import torch

        self.model = model
        self.device = model.device
        self.sampler = sampler
        self.latent_channels = model.latent_channels
        self.cond_channels = model.cond_channels
        self.image_channels = int(model.vqvae.config.out_channels)
        # a KL first stage (AutoencoderKL): latents are scaled by its scaling_factor for the UNet
        self.kl_scaling = (
            float(model.vqvae.config.get("scaling_factor", 1.0))
            if getattr(model, "first_stage_kind", "vqvae") == "vae"
            else None
        )
        self.channels_last = self.device.type == "cuda"
        self.unet = torch.compile(model.unet) if compile else model.unet
        # shared statistics switch per call and per thread: the first stage stays eager then
        self.encoder_norms = norm_stats.install(model.vqvae.encoder) if shared_norm else 0
        self.decoder_norms = norm_stats.install(model.vqvae.decoder) if shared_norm else 0
        compile_first_stage = compile and not shared_norm
        self.vq_decode = (
            torch.compile(model.vqvae.decode) if compile_first_stage else model.vqvae.decode
        )
        self.vq_encode = (
            torch.compile(model.vqvae.encode) if compile_first_stage else model.vqvae.encode
        )
        # the first stage's own dtype: float32 where a half-precision KL VAE is upcast
        self.first_stage_dtype = next(model.vqvae.parameters()).dtype
        self.default_batch_size = BATCH_SIZES["cuda" if self.device.type == "cuda" else "cpu"]
        self.decode_batch_size = self.default_batch_size  # first-stage windows per call
        self.allow_pickle = allow_pickle  # for the text encoder, loaded apart (ldm/text.py)

    @classmethod
    def load(cls, plan: Plan, runtime: RuntimeOptions) -> ModelRunner:
        """The model of ``plan``, loaded (and compiled) once per process for consecutive runs that
        use it: a workflow's files, or the plans a Dask worker serves one after the other."""
        spec = plan.diffusion
        return _loaded_runner(
            spec.model_dir,
            spec.weights,
            runtime.device,
            spec.dtype,
            runtime.allow_pickle,
            spec.sampler,
            runtime.compile,
            spec.shared_norm,
        )

    def noise_low_res(self, image: np.ndarray, level: int, noise: np.ndarray) -> np.ndarray:
        """The x4 upscaler's conditioning: the low-res ``image`` in [-1, 1] noised to ``level`` by
        the model's low_res_scheduler (diffusers' add_noise) with the given ``noise``."""
        import torch

        noised = self.low_res_scheduler().add_noise(
            torch.from_numpy(image)[None],
            torch.from_numpy(noise)[None],
            torch.tensor([level], dtype=torch.long),
        )
        return noised[0].numpy()

    @functools.cache  # noqa: B019 (one runner per process: the cache lives as long as the model)
    def low_res_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(self.model.model_dir, subfolder="low_res_scheduler")

    def limit_threads(self, threads: int):
        if self.device.type == "cpu":
            import torch

            torch.set_num_threads(threads)

    def new_scheduler(self):
        return self.model.make_scheduler(self.sampler)

    def to_device(self, array: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def _prepare(self, batch, dtype=None):
        import torch

        batch = batch.to(dtype or self.model.dtype)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def unet_call(self, inputs, timestep, encoder_hidden_states=None, class_labels=None):
        """The UNet's prediction for a batch of tiles at one timestep; a text-conditioned UNet
        also takes the prompt embeddings (one row per tile) and, for the x4 upscaler, the noise
        level as class labels."""
        import torch

        conditioning = {}
        if encoder_hidden_states is not None:
            conditioning["encoder_hidden_states"] = encoder_hidden_states.to(self.model.dtype)
        if class_labels is not None:
            conditioning["class_labels"] = class_labels
        with torch.inference_mode():
            return self.unet(self._prepare(inputs), timestep, **conditioning).sample

    def encode_pixels(self, pixels: np.ndarray, norms=None) -> np.ndarray:
        """(n, channels, h*f, w*f) pixels in [-1, 1] -> (n, C, h, w) latents, not quantized (the
        inpainting model's conditioning, as CompVis encodes it). ``norms``: the run's shared
        GroupNorm statistics, or a ``norm_stats.Recorder`` measuring them (None: per call)."""
        import torch

        with torch.inference_mode(), norm_stats.using(norms):
            encoded = self.vq_encode(self._prepare(self.to_device(pixels), self.first_stage_dtype))
            if self.kl_scaling is None:
                latents = encoded.latents
            else:  # KL: the posterior's mode, scaled to the UNet's unit variance
                latents = encoded.latent_dist.mode() * self.kl_scaling
        return latents.float().cpu().numpy()

    def decode_latents(self, latents: np.ndarray, norms=None) -> np.ndarray:
        """(n, C, h, w) latents -> (n, channels, h*f, w*f) pixels in about [-1, 1], float32.
        A VQ decoder quantizes to its codebook first, as the LDM-SR pipeline does; a KL decoder
        takes the latents unscaled. ``norms`` as for ``encode_pixels``."""
        import torch

        with torch.inference_mode(), norm_stats.using(norms):
            inputs = self._prepare(self.to_device(latents), self.first_stage_dtype)
            if self.kl_scaling is not None:
                inputs = inputs / self.kl_scaling
            pixels = self.vq_decode(inputs).sample
        return pixels.float().cpu().numpy()


@functools.lru_cache(maxsize=1)  # one model held per process: loading another releases it
def _loaded_runner(
    model_dir: str,
    weights: tuple,
    device: str,
    dtype: str,
    allow_pickle: bool,
    sampler: str,
    compile: bool,
    shared_norm: bool,
) -> ModelRunner:
    """``weights``: the weight files' (name, size, mtime), so a model folder changed on disk is
    loaded again. The folder's format picks the loader."""
    from tiler.ldm.loading import load_model

    model = load_model(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle)
    return ModelRunner(model, sampler, compile, shared_norm, allow_pickle)


@functools.lru_cache(maxsize=8)
def load_npy(path: Path, mtime_ns: int) -> np.ndarray:
    """A workdir's .npy file (statistics, prompt embeddings), read once per process (the file's
    mtime in the key: a rerun's new file is read)."""
    return np.load(path)
