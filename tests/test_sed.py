"""The SED head (model.head=sed): clip-wise logits pooled from frame-wise ones by attention over time, on any timm
CNN; refused on models without a feature map; reloaded from a state_dict as trained folds are."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from competition.backbones import SEDModel
from competition.config import load_config
from competition.errors import UserError
from competition.frontend import make_frontend
from competition.models import create_model

RATE = 16000


def sed_config(tmp_path: Path, *overrides: str):
    """One-second clips at 16 kHz as 64-band log-mel images (101 frames), under an SED head."""
    config = tmp_path / "config.yaml"
    config.write_text("data: {name: x}\n")
    return load_config(config, ["audio.sample_rate=16000", "audio.duration=1.0", "frontend.n_mels=64",
                                "model.head=sed", *overrides])


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050", "convnext_atto"])
def test_sed_head_gives_clip_and_frame_logits_on_any_cnn(tmp_path: Path, name: str) -> None:
    cfg = sed_config(tmp_path, f"model.name={name}", "model.drop_rate=0.2")
    model = create_model(cfg, 3, pretrained=False).eval()
    assert isinstance(model, SEDModel)
    x = make_frontend(cfg)(torch.randn(2, RATE))
    with torch.no_grad():
        clip = model(x)
        logits, weights = model.frames(x)
    assert clip.shape == (2, 3)
    assert logits.shape == weights.shape and logits.shape[::2] == (2, 3) and logits.shape[1] > 1
    torch.testing.assert_close(model.framewise(x), logits)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 3))
    torch.testing.assert_close(clip, (logits * weights).sum(1))  # the attention-weighted mean of the frame logits


def test_trained_sed_weights_load_back_into_a_fresh_model(tmp_path: Path) -> None:
    cfg = sed_config(tmp_path, "model.name=resnet18")
    torch.manual_seed(0)
    model = create_model(cfg, 4, pretrained=False)
    x = make_frontend(cfg)(torch.randn(3, RATE))
    model(x).sum().backward()  # training-mode pass: BatchNorm statistics move off their initial values
    torch.manual_seed(1)
    again = create_model(cfg, 4, pretrained=False)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))
        assert torch.equal(model.framewise(x), again.framewise(x))


def test_pretrained_weights_load_into_the_backbone_under_the_sed_head(tmp_path: Path) -> None:
    import timm

    rgb = timm.create_model("resnet10t", num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "resnet10t.pth")
    model = create_model(sed_config(tmp_path, "model.name=resnet10t",
                                    f"model.weights_file={tmp_path / 'resnet10t.pth'}"), 5)
    assert torch.allclose(model.backbone.conv1[0].weight[:, 0], rgb.conv1[0].weight.sum(1), atol=1e-5)
    assert torch.equal(model.backbone.layer4[0].conv1.weight, rgb.layer4[0].conv1.weight)
    assert model.head.cla.out_channels == 5


@pytest.mark.parametrize("overrides", [
    ["model.name=stats_linear", "frontend.kind=clip_stats"],  # a vector per clip: no feature map at all
    # a ViT's tokens (batch, tokens, channels): its 224x224 input is 224 mel bands of 2.23 s at hop 160
    ["model.name=vit_tiny_patch16_224", "frontend.n_mels=224", "frontend.n_fft=2048", "audio.duration=2.23"],
])
def test_a_model_without_a_feature_map_is_refused(tmp_path: Path, overrides: list[str]) -> None:
    with pytest.raises(UserError, match="model.head=sed") as refusal:
        create_model(sed_config(tmp_path, *overrides), 2, pretrained=False)
    assert overrides[0].split("=")[1] in str(refusal.value) and "\n" not in str(refusal.value)


def test_sed_model_learns_a_tone_in_the_second_half(tmp_path: Path) -> None:
    """Class 1 is a 1 kHz tone in the clip's second half, class 0 its absence: a few steps lower the BCE loss, with
    gradients reaching both the frame classifier and the attention."""
    cfg = sed_config(tmp_path, "model.name=mobilenetv3_small_050")
    torch.manual_seed(0)
    model = create_model(cfg, 2, pretrained=False)
    waves = 0.05 * torch.randn(8, RATE)
    present = torch.tensor([0.0, 1.0] * 4)
    t = torch.arange(RATE // 2) / RATE
    waves[:, RATE // 2:] += present[:, None] * 0.5 * torch.sin(2 * torch.pi * 1000 * t)
    x, y = make_frontend(cfg)(waves), torch.stack([1 - present, present], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        assert model.head.cla.weight.grad.abs().sum() > 0 and model.head.att.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
