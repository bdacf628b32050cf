"""tiler's model-directory format: the tiler.yaml card, checked against the component folders and
the channel layout, with tiny inpainting and synthesis models saved with save_pretrained."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from tiny_models import save_tiny_inpaint_model, save_tiny_synthesis_model

from tiler.errors import ModelError
from tiler.ldm.card import ModelCard, read_card, write_card


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory):
    return save_tiny_inpaint_model(tmp_path_factory.mktemp("models") / "inpaint")


@pytest.fixture(scope="module")
def synthesis_dir(tmp_path_factory):
    return save_tiny_synthesis_model(tmp_path_factory.mktemp("models") / "synthesis")


def copy_of(model_dir, tmp_path):
    return shutil.copytree(model_dir, tmp_path / model_dir.name)


def test_cards_of_the_tiny_models_read_back(inpaint_dir, synthesis_dir):
    inpaint = read_card(inpaint_dir)
    assert (inpaint.task, inpaint.conditioning.kind, inpaint.first_stage) == (
        "inpaint",
        "masked-image-and-mask",
        "vqvae",
    )
    synthesis = read_card(synthesis_dir)
    assert synthesis.conditioning.classes == 6 and synthesis.conditioning.rescale_stages == 2
    text = (synthesis_dir / "tiler.yaml").read_text()
    assert "first-stage: vqvae" in text and "rescale-stages: 2" in text  # the card's own spelling


def edit_card(model_dir, **changes):
    path = model_dir / "tiler.yaml"
    data = yaml.safe_load(path.read_text()) | changes
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"task": "colourise"}, ["task", "'colourise'"]),
        ({"colour": True}, ["colour", "Extra inputs are not permitted"]),
        (
            {"task": "synthesis"},
            [
                "conditioning.kind",
                "'masked-image-and-mask' does not fit task 'synthesis'",
                "'labels'",
            ],
        ),
        ({"first-stage": "vae"}, ["vae/config.json: missing"]),
        (
            {"conditioning": {"kind": "low-res-image"}, "task": "superres"},
            ["unet/config.json: in_channels 7", "expected 6 in"],
        ),
    ],
)
def test_bad_cards_name_the_file_and_key(tmp_path, inpaint_dir, changes, fragments):
    model_dir = copy_of(inpaint_dir, tmp_path)
    edit_card(model_dir, **changes)
    with pytest.raises(ModelError) as raised:
        read_card(model_dir)
    message = str(raised.value)
    assert message.startswith(str(model_dir)), message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_card_says_how_to_get_one(tmp_path, inpaint_dir):
    model_dir = copy_of(inpaint_dir, tmp_path)
    (model_dir / "tiler.yaml").unlink()
    with pytest.raises(ModelError, match="tiler.yaml: missing.*tiler convert"):
        read_card(model_dir)


def test_rescaler_shape_must_match_the_card(tmp_path, synthesis_dir):
    model_dir = copy_of(synthesis_dir, tmp_path)
    edit_card(model_dir, conditioning={"kind": "labels", "classes": 7})
    with pytest.raises(ModelError, match=r"has shape \(3, 6, 1, 1\); expected \(3, 7, 1, 1\)"):
        read_card(model_dir)
    (model_dir / "cond_stage" / "label_rescaler.safetensors").unlink()
    with pytest.raises(ModelError, match="label_rescaler.safetensors: missing"):
        read_card(model_dir)


def test_component_class_is_checked(tmp_path, inpaint_dir):
    model_dir = copy_of(inpaint_dir, tmp_path)
    config = json.loads((model_dir / "vqvae" / "config.json").read_text())
    (model_dir / "vqvae" / "config.json").write_text(
        json.dumps(config | {"_class_name": "AutoencoderKL"})
    )
    with pytest.raises(ModelError, match="a AutoencoderKL; expected a VQModel"):
        read_card(model_dir)


def test_write_then_read_round_trip(tmp_path, inpaint_dir):
    model_dir = copy_of(inpaint_dir, tmp_path)
    card = read_card(model_dir).model_copy(update={"name": "renamed", "tile": 64})
    write_card(model_dir, card)
    assert read_card(model_dir) == card
    assert isinstance(card, ModelCard)


def test_inpainting_first_stage_has_no_attention(inpaint_dir):
    from diffusers import VQModel
    from diffusers.models.attention_processor import Attention

    vq = VQModel.from_pretrained(inpaint_dir / "vqvae")
    assert not any(isinstance(module, Attention) for module in vq.modules())
