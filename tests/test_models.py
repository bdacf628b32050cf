"""tiler.ldm (folders, samplers, devices, loading): finding, checking and loading the LDM
super-resolution model, samplers, and batch invariance on CPU. Tiny random models of the real
classes are saved into temporary folders (and into a fake Hugging Face cache); nothing is
downloaded: the hub is either switched off
(HF_HUB_OFFLINE=1) or pointed at a closed local port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import SCHEDULER_CONFIG, save_tiny_sr_model, tiny_unet

from tiler.errors import BadParameter, ModelError
from tiler.ldm.batch_invariance import (
    batch_invariant_modules,
    enable_cpu_determinism,
    make_batch_invariant,
)
from tiler.ldm.folders import DEFAULT_SR_MODEL, check_weights, resolve_model_dir
from tiler.ldm.loading import LDMModel, load_pipeline_model
from tiler.ldm.samplers import SAMPLERS, make_scheduler, step_accepts_noise

torch.set_num_threads(1)

# diffusers' schedulers call np.array(tensor, copy=False) (numpy 2 deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO_ID = "owner/tiny-sr"


# --- fixtures and helpers
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny LDM-SR model folder with safetensors weights (built once for this module)."""
    return save_tiny_sr_model(tmp_path_factory.mktemp("models") / "tiny-sr")


@pytest.fixture(scope="module")
def pickle_model_dir(tmp_path_factory) -> Path:
    """The same tiny model (same seed, same weights) saved with pickle weights only."""
    return save_tiny_sr_model(tmp_path_factory.mktemp("models") / "tiny-sr-bin", safetensors=False)


@pytest.fixture(autouse=True)
def restore_mkldnn():
    """load_pipeline_model switches oneDNN off process-wide on CPU: give other test modules their
    state back."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled


def fake_hub_cache(hub_cache: Path, repo_id: str, source: Path, revision: str = "main") -> Path:
    """Lay ``source`` out like huggingface_hub's cache: models--owner--name/{blobs, refs/<revision>,
    snapshots/<commit>/...} with snapshot files symlinked to content-addressed blobs. Returns the
    snapshot folder."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex string
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache under tmp_path with the hub switched off, for this process.
    huggingface_hub reads HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE when first imported, so the
    constants it reads at call time are patched too (the env-only path is tested in a
    subprocess)."""
    import huggingface_hub.constants as constants

    hub_cache = tmp_path / "hf" / "hub"
    hub_cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def run_python(code: str, env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -c CODE`` in a fresh process with a clean Hugging Face environment plus
    overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def closed_local_port() -> int:
    """A local TCP port nobody listens on (connections to it are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- loading
# ---------------------------------------------------------------------------------------
def test_import_is_light():
    code = (
        "import sys, tiler.ldm.loading; "
        "print(sorted(m for m in ('torch', 'diffusers', 'huggingface_hub') if m in sys.modules))"
    )
    result = run_python(code, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_local_dir_loads(tiny_model_dir):
    from diffusers import UNet2DModel, VQModel
    from diffusers.schedulers import DDIMScheduler

    model = load_pipeline_model(str(tiny_model_dir))
    assert isinstance(model, LDMModel)
    assert isinstance(model.unet, UNet2DModel) and isinstance(model.vqvae, VQModel)
    assert (model.scale, model.latent_channels, model.cond_channels) == (4, 3, 3)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.model_dir == tiny_model_dir
    for module in (model.unet, model.vqvae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert all(p.dtype == torch.float32 for p in module.parameters())
    scheduler = model.make_scheduler()
    assert isinstance(scheduler, DDIMScheduler)
    assert scheduler.config.beta_start == SCHEDULER_CONFIG["beta_start"]
    assert scheduler.config.clip_sample is False


def test_default_model_is_the_compvis_hub_id():
    assert DEFAULT_SR_MODEL == "CompVis/ldm-super-resolution-4x-openimages"


def test_bfloat16_on_cpu_is_allowed(tiny_model_dir):
    model = load_pipeline_model(str(tiny_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.unet.parameters())
    latent = torch.randn(2, 6, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert model.unet(latent, 10).sample.shape == (2, 3, 16, 16)


def test_cached_hub_id_loads_offline(tiny_model_dir, offline_hub):
    snapshot = fake_hub_cache(offline_hub, REPO_ID, tiny_model_dir)
    assert resolve_model_dir(REPO_ID).resolve() == snapshot.resolve()
    model = load_pipeline_model(REPO_ID)
    assert Path(model.model_dir).resolve() == snapshot.resolve()
    assert (model.scale, model.latent_channels, model.cond_channels) == (4, 3, 3)
    reference = load_pipeline_model(str(tiny_model_dir))
    assert torch.equal(model.unet.conv_in.weight, reference.unet.conv_in.weight)


def test_cached_hub_id_resolves_with_environment_only(tiny_model_dir, tmp_path):
    """A real user sets HF_HOME and HF_HUB_OFFLINE before the process starts."""
    snapshot = fake_hub_cache(tmp_path / "hf" / "hub", REPO_ID, tiny_model_dir)
    code = f"from tiler.ldm.folders import resolve_model_dir; print(resolve_model_dir({REPO_ID!r}))"
    result = run_python(code, {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).resolve() == snapshot.resolve()


def check_not_cached_message(message: str, repo_id: str, cache: Path) -> None:
    assert "\n" not in message
    assert message.startswith(f"model {repo_id}: not in the Hugging Face cache (")
    assert str(cache.resolve()) in message or str(cache) in message
    assert "hub cannot be reached" in message
    assert f"hf download {repo_id} --local-dir DIR" in message
    assert message.endswith("pass --model DIR")


def test_offline_not_cached_hub_id_is_refused(offline_hub, tiny_model_dir):
    fake_hub_cache(offline_hub, REPO_ID, tiny_model_dir)  # another model is cached
    with pytest.raises(ModelError) as caught:
        load_pipeline_model("owner/missing-model")
    check_not_cached_message(str(caught.value), "owner/missing-model", offline_hub)
    assert "HF_HUB_OFFLINE" in str(caught.value)
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("hub_env", ["offline", "unreachable"])
def test_not_cached_hub_id_is_refused_in_a_fresh_process(tmp_path, hub_env):
    """Environment only: HF_HUB_OFFLINE=1, or the hub endpoint at a closed local port (a connection
    error, as on a machine without internet); either way an immediate one-line error."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    if hub_env == "unreachable":
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{closed_local_port()}")
    code = (
        "from tiler.errors import ModelError\nfrom tiler.ldm.folders import resolve_model_dir\n"
        "try:\n    resolve_model_dir('CompVis/not-cached')\n"
        "except ModelError as error:\n    print(error)\n"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    check_not_cached_message(result.stdout.strip(), "CompVis/not-cached", tmp_path / "hf" / "hub")


@pytest.mark.parametrize(
    "model", ["not a model", "./missing/folder/x", "/no/such/dir", "a/b/c", "gpt"]
)
def test_unusable_model_names_are_bad_parameters(model):
    with pytest.raises(BadParameter) as caught:
        resolve_model_dir(model)
    message = str(caught.value)
    assert caught.value.option == "model" and caught.value.exit_code == 2
    assert "owner/name" in message and "local model directory" in message
    assert "nearest, bicubic, lanczos" in message and "\n" not in message


def test_a_file_is_not_a_model(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(BadParameter, match="is a file"):
        resolve_model_dir(str(weights))


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(
        ModelError, match=r"not a model folder \(expected model_index.json or tiler.yaml"
    ):
        resolve_model_dir(str(tmp_path))


def test_other_pipelines_are_refused(tiny_model_dir, tmp_path):
    other = tmp_path / "sd"
    shutil.copytree(tiny_model_dir, other)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelError, match="a StableDiffusionPipeline; expected one of LDMSuperResolutionPipeline"
    ):
        load_pipeline_model(str(other))


# --- weights
# ---------------------------------------------------------------------------------------
def test_pickle_weights_are_refused_without_allow_pickle(pickle_model_dir):
    with pytest.raises(ModelError) as caught:
        load_pipeline_model(str(pickle_model_dir))
    assert str(caught.value) == (
        f"{pickle_model_dir / 'unet'}: weights are a pickle file (diffusion_pytorch_model.bin), "
        "which can run arbitrary code when loaded; convert them to safetensors or pass "
        "--allow-pickle"
    )


def test_pickle_weights_load_with_allow_pickle(pickle_model_dir, tiny_model_dir):
    model = load_pipeline_model(str(pickle_model_dir), allow_pickle=True)
    reference = load_pipeline_model(str(tiny_model_dir))
    assert (model.scale, model.latent_channels, model.cond_channels) == (4, 3, 3)
    for ours, theirs in zip(model.unet.state_dict().values(), reference.unet.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_check_weights(tiny_model_dir, pickle_model_dir, tmp_path):
    found = check_weights(tiny_model_dir, ["unet", "vqvae"], allow_pickle=False)
    assert {name: path.name for name, path in found.items()} == {
        "unet": "diffusion_pytorch_model.safetensors",
        "vqvae": "diffusion_pytorch_model.safetensors",
    }
    found = check_weights(pickle_model_dir, ["unet"], allow_pickle=True)
    assert found["unet"].name == "diffusion_pytorch_model.bin"
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"unet: no weights \(expected \*.safetensors"):
        check_weights(tmp_path, ["unet"], allow_pickle=True)
    with pytest.raises(ModelError, match="vqvae: missing"):
        check_weights(tmp_path, ["vqvae"], allow_pickle=False)


# --- samplers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sampler, class_name",
    [
        ("ddim", "DDIMScheduler"),
        ("dpm++", "DPMSolverMultistepScheduler"),
        ("dpm++-sde", "DPMSolverMultistepScheduler"),
        ("euler", "EulerDiscreteScheduler"),
        ("heun", "HeunDiscreteScheduler"),
        ("lms", "LMSDiscreteScheduler"),
        ("pndm", "PNDMScheduler"),
        ("unipc", "UniPCMultistepScheduler"),
        ("DEISMultistepScheduler", "DEISMultistepScheduler"),
    ],
)
def test_make_scheduler(tiny_model_dir, sampler, class_name):
    scheduler = make_scheduler(tiny_model_dir, sampler)
    assert type(scheduler).__name__ == class_name == SAMPLERS.get(sampler, class_name)
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == SCHEDULER_CONFIG["beta_end"]
    if sampler.startswith("dpm++"):
        expected = "sde-dpmsolver++" if sampler == "dpm++-sde" else "dpmsolver++"
        assert scheduler.config.algorithm_type == expected


def test_noise_taking_steps_are_reproducible_with_keyed_noise(tiny_model_dir):
    """dpm++-sde takes its noise as variance_noise: the global RNG does not matter."""
    results = []
    for seed in (0, 1):
        scheduler = make_scheduler(tiny_model_dir, "dpm++-sde")
        assert step_accepts_noise(scheduler)
        scheduler.set_timesteps(5)
        sample = torch.ones(1, 3, 4, 4)
        noise = torch.full((1, 3, 4, 4), 0.5)
        torch.manual_seed(seed)
        for t in scheduler.timesteps[:3]:
            sample = scheduler.step(0.1 * sample, t, sample, variance_noise=noise).prev_sample
        results.append(sample)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    "sampler",
    [
        "euler-a",
        "ddpm",
        "EulerAncestralDiscreteScheduler",
        "DDPMScheduler",
        "KDPM2AncestralDiscreteScheduler",
    ],
)
def test_samplers_drawing_their_own_noise_are_refused(tiny_model_dir, sampler):
    with pytest.raises(BadParameter) as caught:
        make_scheduler(tiny_model_dir, sampler)
    message = str(caught.value)
    assert caught.value.option == "sampler" and caught.value.exit_code == 2
    assert "draws its own random noise" in message and "keyed noise" in message
    assert "ddim, dpm++, dpm++-sde, euler, heun, lms, pndm, unipc" in message


@pytest.mark.parametrize(
    "sampler", ["foo", "NoSuchScheduler", "FlowMatchEulerDiscreteScheduler", ""]
)
def test_unknown_or_unfit_samplers_are_refused(tiny_model_dir, sampler):
    with pytest.raises(BadParameter, match="sampler.*accepted: ddim, dpm\\+\\+"):
        make_scheduler(tiny_model_dir, sampler)


# --- devices and dtypes
# ----------------------------------------------------------------------------
def test_missing_gpu_is_a_bad_device(tiny_model_dir):
    missing = f"cuda:{max(3, torch.cuda.device_count())}"
    with pytest.raises(BadParameter) as caught:
        load_pipeline_model("owner/never-looked-up", device=missing)  # checked before the model
    assert caught.value.option == "device" and missing in str(caught.value)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(BadParameter, match="expected auto, cpu, cuda or cuda:N"):
        load_pipeline_model("owner/never-looked-up", device=device)


@pytest.mark.parametrize("dtype", ["float64", "half", "int8"])
def test_bad_dtype(tiny_model_dir, dtype):
    with pytest.raises(BadParameter) as caught:
        load_pipeline_model(str(tiny_model_dir), device="cpu", dtype=dtype)
    assert caught.value.option == "dtype"
    assert "float32, float16, bfloat16" in str(caught.value)


# --- batch invariance
# ------------------------------------------------------------------------------
def test_loaded_model_is_batch_invariant_on_cpu(tiny_model_dir):
    model = load_pipeline_model(str(tiny_model_dir))
    assert torch.backends.mkldnn.enabled is False
    inputs = torch.randn(7, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor(500)
    with torch.no_grad():
        batched = model.unet(inputs, timestep).sample
        singles = torch.cat([model.unet(inputs[i : i + 1], timestep).sample for i in range(7)])
        split = torch.cat(
            [model.unet(inputs[:3], timestep).sample, model.unet(inputs[3:], timestep).sample]
        )
        latents = inputs[:, :3]
        decoded = model.vqvae.decode(latents).sample
        decoded_singles = torch.cat(
            [model.vqvae.decode(latents[i : i + 1]).sample for i in range(7)]
        )
    assert batched.std() > 0.01
    assert torch.equal(batched, singles) and torch.equal(batched, split)
    assert decoded.shape == (7, 3, 64, 64)
    assert torch.equal(decoded, decoded_singles)


def test_make_batch_invariant_on_a_fresh_unet():
    torch.manual_seed(0)
    unet = tiny_unet().eval().requires_grad_(False)
    inputs = torch.randn(7, 6, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = unet(inputs, 250).sample
    first_row_broadcast, var_mean_group_norm = batch_invariant_modules()
    assert make_batch_invariant(unet) is unet
    make_batch_invariant(unet)  # twice is harmless
    enable_cpu_determinism()
    modules = list(unet.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in modules)
    assert sum(isinstance(m, var_mean_group_norm) for m in modules) > 0
    assert isinstance(unet.time_embedding, first_row_broadcast)
    assert all(
        isinstance(m.time_emb_proj, first_row_broadcast)
        for m in modules
        if getattr(m, "time_emb_proj", None) is not None
    )
    assert all(len(m._forward_pre_hooks) == 1 for m in modules if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        batched = unet(inputs, 250).sample
        singles = torch.cat([unet(inputs[i : i + 1], 250).sample for i in range(7)])
    assert torch.equal(batched, singles)
    torch.testing.assert_close(batched, before, rtol=1e-4, atol=1e-5)  # same model, last bits aside


def test_batch_invariant_unet_takes_one_timestep_per_call():
    torch.manual_seed(0)
    unet = make_batch_invariant(tiny_unet().eval().requires_grad_(False))
    with torch.no_grad(), pytest.raises(ValueError, match="one timestep per call"):
        unet(torch.randn(2, 6, 16, 16), torch.tensor([10, 20]))
