"""Any timm backbone by name, fed one-channel spectrograms; pretrained weights from the hub or a local file.

timm adapts pretrained 3-channel RGB stems to `in_chans=1` and replaces the classifier head, so an ImageNet
checkpoint (downloaded, or saved by hand on a machine without internet) starts a spectrogram model. With
model.head=sed, the backbone's pooling and classifier give way to an SED head (competition.backbones.SEDModel).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig
from torch.nn.modules.lazy import LazyModuleMixin

from competition.backbones import SEDModel  # also registers our own models with timm
from competition.encoders import EncoderClassifier, fine_tuned
from competition.errors import UserError
from competition.frontend import make_frontend


def check_backbone(name: str) -> None:
    if name in timm.list_models() or name.split(".")[0] in timm.list_models():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
    close = close or timm.list_models(f"*{name}*")[:4]
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise UserError(f"model.name '{name}' is not a timm model; {hint}")


def _check_weights_cover(model: torch.nn.Module, weights: Path) -> None:
    """timm loads pretrained files non-strictly; refuse a file that leaves backbone layers at random init."""
    stored = set(timm.models.load_state_dict(str(weights)))
    head = model.pretrained_cfg.get("classifier") or ""
    heads = (head,) if isinstance(head, str) else tuple(head)
    missing = [k for k in model.state_dict() if k not in stored and not k.startswith(heads) and "num_batches" not in k]
    if missing:
        raise UserError(f"model.weights_file '{weights}' lacks {len(missing)} of the backbone's tensors "
                        f"(e.g. {missing[0]}); is it a checkpoint of '{model.pretrained_cfg.get('architecture')}'?")


def create_model(cfg: DictConfig, num_classes: int, pretrained: bool = True) -> torch.nn.Module:
    """The configured backbone with a `num_classes` head (model.head: the backbone's own, or an SED head) and a
    one-channel stem, or with frontend.trainable the encoder and that head as one model; with pretrained=False, no
    weights are loaded (for a trained fold's own weights, loaded next)."""
    check_backbone(cfg.model.name)
    if fine_tuned(cfg):
        head = _backbone(cfg.model, False, num_classes=num_classes)
        return _materialise(EncoderClassifier.from_config(cfg, head, pretrained), cfg)
    if cfg.model.get("head", "plain") == "sed":  # get: a fold saved before model.head existed has a plain head
        backbone = _backbone(cfg.model, pretrained, num_classes=0, global_pool="")  # the SED head pools, classifies
        return _materialise(SEDModel(_check_feature_map(backbone, cfg), num_classes, cfg.model.drop_rate), cfg)
    return _materialise(_backbone(cfg.model, pretrained, num_classes=num_classes), cfg)


def _backbone(spec: DictConfig, pretrained: bool, **head: Any) -> torch.nn.Module:
    """timm's `spec.name` with a one-channel stem, `head` its classifier arguments, and pretrained weights (from
    the hub or model.weights_file) where `pretrained` and the config ask for them."""
    kwargs = dict(in_chans=1, drop_rate=spec.drop_rate, **head)
    if not pretrained:
        return timm.create_model(spec.name, **kwargs)
    if spec.weights_file:
        weights = Path(spec.weights_file).expanduser()
        if not weights.is_file():
            raise UserError(f"model.weights_file '{weights}' not found; give the path of a .pth/.bin/.safetensors file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    elif spec.pretrained:
        kwargs.update(pretrained=True)
    try:
        model = timm.create_model(spec.name, **kwargs)
        if spec.weights_file:
            _check_weights_cover(model, weights)
        return model
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        if not (spec.pretrained or spec.weights_file):
            raise
        where = f"from {spec.weights_file}" if spec.weights_file else "from the hub (offline?)"
        raise UserError(
            f"cannot load pretrained weights for '{spec.name}' {where}: {str(exc).splitlines()[0][:200]}. "
            "On a machine without internet, save timm's checkpoint elsewhere "
            "(timm.create_model(name, pretrained=True).state_dict() -> torch.save) and set model.weights_file=<path>, "
            "or train from scratch with model.pretrained=false") from None


def _silent_input(cfg: DictConfig, batch: int) -> torch.Tensor:
    """`batch` silent clips through the configured frontend: what the model is fed, for dry runs."""
    return make_frontend(cfg)(torch.zeros(batch, round(cfg.audio.duration * cfg.audio.sample_rate)))


@torch.no_grad()
def _check_feature_map(backbone: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The SED head pools a (batch, channels, freq, time) map: refuse, before any training, a backbone whose
    features are not one (a per-clip vector model such as stats_linear, a transformer's tokens, a channels-last map),
    found by a dry run of a silent clip."""
    shape = None
    if hasattr(backbone, "forward_features") and hasattr(backbone, "num_features"):
        backbone.eval()
        shape = tuple(backbone.forward_features(_silent_input(cfg, 1)).shape)
        backbone.train()
    if shape is None or len(shape) != 4 or shape[1] != backbone.num_features:
        got = "no feature map" if shape is None else f"features of shape {shape}"
        raise UserError(f"model.head=sed needs a CNN whose features are a (channels, freq, time) map, but model.name "
                        f"'{cfg.model.name}' gives {got}; use model.head=plain, or a CNN such as resnet18")
    return backbone


@torch.no_grad()
def _materialise(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """Layers sized by their first input (lazy ones, as in stats_linear) take their size from two silent clips
    through the configured frontend, so the optimiser and load_state_dict see real parameters."""
    if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()):
        model.eval()
        model(_silent_input(cfg, 2))
        model.train()
    return model
