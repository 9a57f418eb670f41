"""Deterministic test-time views, written as strings in config (`tta.views`), e.g. "plain", "window:-0.1", "gain:6".

Parsing a view imports no torch, so a config's views are checked before torch is imported; a view's transform works
on the waveforms (batch, samples) it is given.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

from competition.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class View:
    """A deterministic test-time view: where the window sits in the clip (`move`, a fraction of the window, slid along
    the clip's own audio) and what is done to the waveforms (batch, samples) cut there. A `whole` view instead slides
    the window over the whole clip, half a window at a time, and pools the windows' probabilities (mean or max)."""

    transform: Callable[[Tensor], Tensor]
    move: float = 0.0
    whole: str = ""  # "", "mean" or "max"

    def __call__(self, x: Tensor) -> Tensor:
        return self.transform(x)


def _plain(x: Tensor) -> Tensor:
    return x


def _shifted(x: Tensor, fraction: float, rollover: bool) -> Tensor:
    import torch

    from competition.augment import shift_samples

    offset = round(fraction * x.shape[-1])
    return shift_samples(x, torch.full((x.shape[0],), offset, device=x.device), abs(offset), rollover)


def _gained(x: Tensor, db: float) -> Tensor:
    return x * 10.0 ** (db / 20.0)


def _fraction_view(fraction: float, rollover: bool) -> View:
    if not -1.0 < fraction < 1.0:
        raise ValueError("the fraction must be in (-1, 1)")
    return View(partial(_shifted, fraction=fraction, rollover=rollover))


def _window_view(fraction: float) -> View:
    if not -1.0 < fraction < 1.0:
        raise ValueError("the fraction must be in (-1, 1)")
    return View(_plain, move=fraction)


# view name -> (how it is written, factory taking the number after ':' if the written form has one). A new view is
# one entry here: config validation, prediction and the fold records pick it up by name.
TTA_VIEWS: dict[str, tuple[str, Callable[..., View]]] = {
    "plain": ("plain", lambda: View(_plain)),
    # the window slid along the clip by fraction * its length (earlier if < 0): the clip's own audio comes in, silence
    # only past the clip's ends
    "window": ("window:<fraction>", _window_view),
    # the window's samples moved later by fraction * length (earlier if < 0), zeros in: cuts sound at a hard edge
    "shift": ("shift:<fraction>", partial(_fraction_view, rollover=False)),
    "roll": ("roll:<fraction>", partial(_fraction_view, rollover=True)),  # like shift, what falls off wraps around
    "gain": ("gain:<db>", lambda db: View(partial(_gained, db=db))),
    # clips longer than audio.duration seen whole: the window slid over the clip, the windows' predictions averaged
    "whole": ("whole", lambda: View(_plain, whole="mean")),
    "whole_max": ("whole_max", lambda: View(_plain, whole="max")),  # ... or their class-wise maximum, renormalised
}


def parse_tta_view(spec: str) -> View:
    """A test-time view from its written form, e.g. "plain", "window:-0.1", "shift:-0.1", "roll:0.05", "gain:6"."""
    valid = ", ".join(usage for usage, _ in TTA_VIEWS.values())
    name, sep, number = str(spec).strip().partition(":")
    if name not in TTA_VIEWS:
        close = difflib.get_close_matches(name, TTA_VIEWS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"TTA view '{spec}' is unknown; {hint}valid views: {valid}")
    usage, make = TTA_VIEWS[name]
    if bool(sep) != (":" in usage):
        raise UserError(f"TTA view '{spec}' must be written {usage}; valid views: {valid}")
    if not sep:
        return make()
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"TTA view '{spec}': '{number}' is not a finite number (written {usage}); valid views: {valid}")
    try:
        return make(value)
    except ValueError as exc:  # the factory's own range check
        raise UserError(f"TTA view '{spec}': {exc} (written {usage}); valid views: {valid}") from None
