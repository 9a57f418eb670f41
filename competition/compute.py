"""How a model's arithmetic runs on a device: the precision (autocast) and memory format of training and evaluation.

CPU training in bf16 pays only where the processor computes bf16 in hardware (AMX, AVX512-BF16): there bf16
autocast trained resnet18 1.4x and res2next50 1.8x faster than fp32 (an AMD EPYC with AVX512-BF16); elsewhere
oneDNN emulates it and a training step takes several times longer (benchmarks/training_speed.py), so
train.precision=auto picks bf16 only on such processors. On CUDA train.amp decides (bf16 where the GPU has it, fp16
with loss scaling otherwise). Evaluation on the CPU stays in fp32 unless the caller asks for bf16 (predict's
precision=bf16).

channels_last memory format is used for training where it was measured faster for the backbone's timm family
(CHANNELS_LAST_FAMILIES); prediction always uses it (train.build_fold_model).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
from omegaconf import DictConfig

# timm model modules (families) whose CPU training steps ran faster in channels_last than in the default layout,
# side by side in benchmarks/training_speed.py; a family is added here when that benchmark says so. Idle 2-core AMD
# EPYC with AVX512-BF16, batch 16, medians of 3 repeats (benchmarks/results/training_speed_idle_bf16.txt), in fp32
# and in bf16: resnet 1.08x and 1.06x, res2net 1.32x and 1.32x, efficientnet 1.35x and 1.13x, mobilenetv3 1.32x and
# 1.07x; on a busy machine without bf16 in hardware, fp32, none slower (1.00x-4.3x, one step per arm)
CHANNELS_LAST_FAMILIES: frozenset[str] = frozenset({"resnet", "res2net", "efficientnet", "mobilenetv3"})


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (torch's own probes, which oneDNN's fast bf16 kernels need)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def training_precision(t: DictConfig, device: torch.device) -> str:
    """The precision a fold trains in on `device`: fp32, bf16, or fp16 (CUDA GPUs without bf16)."""
    if device.type == "cuda":
        if not t.amp:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    setting = t.get("precision", "auto")  # get: a fold saved before train.precision existed trained in fp32 or auto
    if setting == "auto":
        return "bf16" if native_bf16() else "fp32"
    return setting


def evaluation_precision(t: DictConfig, device: torch.device) -> str:
    """Validation and prediction: on CUDA as in training; on the CPU fp32 (a caller may wrap bf16 around it)."""
    return training_precision(t, device) if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Autocast to `precision` on `device`; fp32 runs as it is."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def family(model_name: str) -> str:
    """The timm module a backbone is defined in (resnet, efficientnet, mobilenetv3, ...), its family for speed."""
    from timm.models import is_model_in_modules, list_modules  # here: the config's checks import this module

    name = model_name.split(".")[0]
    return next((module for module in list_modules() if is_model_in_modules(name, [module])), "")


def training_memory_format(t: DictConfig, model_name: str) -> torch.memory_format:
    """channels_last where train.memory_format asks for it, or (auto) where it was measured faster for the family."""
    setting = t.get("memory_format", "auto")
    if setting == "auto":
        return torch.channels_last if family(model_name) in CHANNELS_LAST_FAMILIES else torch.contiguous_format
    return torch.channels_last if setting == "channels_last" else torch.contiguous_format
