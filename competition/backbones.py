"""Models of our own, registered with timm so that `model.name` picks them like any timm backbone, and the SED head
(`model.head=sed`) that `competition.models.create_model` puts on any timm CNN.

A new model is a function here decorated with timm's `register_model`; `competition.models.create_model` builds it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model


class StatsLinear(torch.nn.Module):
    """Multinomial logistic regression on a per-clip feature vector (frontend.kind=clip_stats or encoder): the
    features standardised with the training clips' mean and spread (or, with `unit_length`, scaled to unit length
    instead: an encoder's embeddings are compared by angle, and standardising each of hundreds of dimensions over a
    few dozen clips magnifies noise), then one linear layer. Convex, so it is fitted exactly (`fit`, full-batch
    L-BFGS) rather than over epochs: a few speakers' clips are enough, and there is no epoch to pick on a validation
    score that is often already perfect. Sized by its first input (lazy), so any number of features fits."""

    def __init__(self, num_classes: int, unit_length: bool = False) -> None:
        super().__init__()
        self.unit_length = unit_length
        self.scaler = torch.nn.LazyBatchNorm1d(affine=False)  # only its running mean and variance are used
        self.linear = torch.nn.LazyLinear(num_classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return F.normalize(x, dim=1) if self.unit_length else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.unit_length:
            if isinstance(self.scaler.running_mean, torch.nn.parameter.UninitializedBuffer):
                self.scaler(x)  # sizes the lazy layers; unused
            return self.linear(x)
        mean, var = self.scaler.running_mean, self.scaler.running_var
        if isinstance(mean, torch.nn.parameter.UninitializedBuffer):
            self.scaler(x)  # first call sizes the lazy layers
            mean, var = self.scaler.running_mean, self.scaler.running_var
        return self.linear((x - mean) / (var + 1e-8).sqrt())

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 500) -> None:
        """Minimise the mean cross-entropy plus l2 / 2 * |weights|^2 on standardised features (as scikit-learn's
        LogisticRegression with C = 1 / (l2 * n))."""
        if isinstance(self.linear.weight, torch.nn.parameter.UninitializedParameter):
            self(x.float())  # sizes the lazy layers; every value is set below
        x = self.prepare(x).double()
        self.scaler.running_mean.copy_(x.mean(0))
        self.scaler.running_var.copy_(x.var(0, unbiased=False).clamp_min(1e-12))
        z = x if self.unit_length else (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)
        weight = torch.zeros(self.linear.out_features, z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
        bias = torch.zeros(self.linear.out_features, dtype=z.dtype, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.square().sum()
                loss.backward()
            return loss

        optimizer.step(closure)
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)


@register_model
def stats_linear(pretrained: bool = False, num_classes: int = 2, **_) -> StatsLinear:
    """StatsLinear for timm's factory; it has no pretrained weights."""
    if pretrained:
        raise ValueError("stats_linear has no pretrained weights")
    return StatsLinear(num_classes)


@register_model
def embedding_linear(pretrained: bool = False, num_classes: int = 2, **_) -> StatsLinear:
    """StatsLinear on unit-length embeddings (frontend.kind=encoder), fitted exactly."""
    if pretrained:
        raise ValueError("embedding_linear has no pretrained weights")
    return StatsLinear(num_classes, unit_length=True)


class EmbeddingMLP(torch.nn.Module):
    """A small MLP on unit-length embeddings (frontend.kind=encoder), trained over epochs: where classes are not
    linearly separable in the encoder's space. Sized by its first input (lazy)."""

    def __init__(self, num_classes: int, hidden: int = 256, drop_rate: float = 0.2) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.LazyLinear(hidden), torch.nn.GELU(), torch.nn.Dropout(drop_rate),
                                          torch.nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(F.normalize(x.flatten(1), dim=1))


@register_model
def embedding_mlp(pretrained: bool = False, num_classes: int = 2, drop_rate: float = 0.2, **_) -> EmbeddingMLP:
    """EmbeddingMLP for timm's factory; model.drop_rate is its dropout."""
    if pretrained:
        raise ValueError("embedding_mlp has no pretrained weights")
    return EmbeddingMLP(num_classes, drop_rate=drop_rate)


class SEDHead(torch.nn.Module):
    """Sound event detection head, as PANNs' AttBlock (and the BirdCLEF / Cornell birdcall winners that reused it),
    on a CNN's (batch, channels, freq, time) feature map: the map is averaged over frequency into one feature vector
    per time frame, each smoothed with its neighbours (max + mean over 3 frames, as PANNs do), then two 1x1
    convolutions over time give each frame a logit per class (`cla`) and an attention score per class (`att`).

    The scores are normalised with a softmax over time and no tanh before it (PANNs bound them with tanh, so that no
    frame ever weighs more than e^2 times another): the weights pool logits here, and a short event in a long clip
    needs its few frames to dominate, up to max pooling where the training asks for it."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(drop_rate)
        self.cla = torch.nn.Conv1d(in_features, num_classes, 1)
        self.att = torch.nn.Conv1d(in_features, num_classes, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-wise logits and attention weights, each (batch, frames, classes); the weights sum to 1 over frames."""
        x = features.mean(2)
        x = self.dropout(F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1))
        return self.cla(x).transpose(1, 2), self.att(x).softmax(2).transpose(1, 2)


class SEDModel(torch.nn.Module):
    """A timm CNN built with num_classes=0, global_pool="" (its pooling and classifier left out) under an SEDHead.

    `forward` gives clip-wise logits (batch, classes), as every model here does, since the toolkit applies the
    softmax (single-label) or sigmoid (multi-label) itself: per class, the frame-wise logits weighted by the attention
    over time and summed. PANNs pool probabilities instead; pooling logits keeps one output for both tasks."""

    def __init__(self, backbone: torch.nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = SEDHead(backbone.num_features, num_classes, drop_rate)

    def frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame-wise logits and their attention weights over time, each (batch, frames, classes) (see framewise)."""
        return self.head(self.backbone.forward_features(x))

    def framewise(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-wise logits (batch, frames, classes) of a (batch, 1, n_mels, spectrogram frames) input.

        Frame i sums up spectrogram frames [i * r, (i + 1) * r), r the backbone's time stride (timm's
        `feature_info[-1]["reduction"]`: 32 for resnets, efficientnets, mobilenets and convnexts), so it starts about
        i * r * frontend.hop_length / audio.sample_rate seconds into the clip (0.32 s per frame at hop 160 and
        16 kHz); it sees a wider context (the receptive field, and the 3-frame smoothing). There are about
        spectrogram frames / r of them, rounded up or down by the backbone's padding: count them on the output."""
        return self.frames(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, weights = self.frames(x)
        return (logits * weights).sum(1)
