"""Running an ensemble's fold models over decoded test clips: what predict does for an answer file, and what pack
times to say how long a bundle takes per minute of audio. Below both commands, which stand on it and on the bundle
format, never on each other."""
from __future__ import annotations

import sys
from contextlib import nullcontext

import torch
from tqdm import tqdm

from competition.compute import autocast
from competition.ensemble import Ensemble
from competition.predictions import ViewPreds
from competition.task import task_of
from competition.train import (Predictor, build_fold_model, crop_samples, predict_together, predictions_frame,
                               with_mean, write_csv)


def precision_context(precision: str, device: torch.device):
    """bf16 autocast on the CPU for precision=bf16 (predict.PRECISIONS); on CUDA the configs' train.amp decides."""
    return autocast(device, precision) if device.type == "cpu" else nullcontext()


def run_models(ensemble: Ensemble, decoded: dict, device: torch.device, precision: str,
               models_per_pass: int, write: bool = True) -> list[ViewPreds]:
    """Each model's probabilities on the test clips through its views, written to its own file on the way (unless
    not `write`: pack's speed measurement). Models of one sample rate and window go over the clips together
    (models_per_pass at a time, 0: all), sharing each batch's crops, views and, where their frontends match,
    log-mels."""
    total = sum(len(decoded[m.cfg.audio.sample_rate][1]) for m in ensemble.models)
    bar = tqdm(total=total, unit="clip", desc="predicting", file=sys.stderr, dynamic_ncols=True, disable=None)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, model in enumerate(ensemble.models):
        groups.setdefault((model.cfg.audio.sample_rate, crop_samples(model.cfg)), []).append(i)
    preds: dict[int, ViewPreds] = {}
    for (rate, _), members in groups.items():
        _, part, _ = decoded[rate]
        size = models_per_pass or len(members)
        for start in range(0, len(members), size):
            chosen = [ensemble.models[i] for i in members[start:start + size]]
            bar.set_postfix_str(", ".join(m.title for m in chosen) if len(chosen) < 3 else f"{len(chosen)} models")
            predictors = []
            for model in chosen:
                weights, frontend_state = model.state()
                network, frontend = build_fold_model(model.cfg, len(model.classes), weights, frontend_state, device)
                predictors.append(Predictor(network, frontend, model.cfg, list(model.cfg.tta.views)))
            with precision_context(precision, device):
                results = predict_together(predictors, part, device, lambda n: bar.update(n * len(chosen)))
            for i, model, views in zip(members[start:start + size], chosen, results):
                if write:
                    write_csv(predictions_frame(part, with_mean(views), model.classes, task_of(model.cfg)),
                              model.out)  # as a fold's test.csv
                preds[i] = ViewPreds(part.ids, None, views)
    bar.close()
    return [preds[i] for i in range(len(ensemble.models))]
