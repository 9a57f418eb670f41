"""The shared entry point of every `python -m competition.<verb>`: user mistakes become one line and exit 2."""
from __future__ import annotations

import sys
from typing import Callable

from competition.errors import UserError


def wants_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def exit_on_help(usage: str) -> None:
    """Called by a verb run as `python -m competition.<verb>` before its heavy imports (torch, timm, librosa), so that
    --help answers in a fraction of a second instead of after seconds of imports."""
    if wants_help(sys.argv[1:]):
        print(usage.strip())
        sys.exit(0)


def main_guard(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """Run a verb's `main`; -h or --help prints its module's docstring (the usage) instead of running it."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(sys.modules[main.__module__].__doc__.strip())
        return
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def parse_options(argv: list[str], defaults: dict[str, str], example: str) -> dict[str, str]:
    """key=value arguments of a command that takes no config overrides (board, mixtures), over their defaults; an
    argument that is not key=value, or an unknown key (with the closest one), is one line. Unlike
    competition.config.parse_cli it imports nothing, so such a command starts in a fraction of a second."""
    import difflib

    options = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"argument '{arg}' is not key=value (e.g. {example})")
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise UserError(f"unknown key '{key}'" + (f"; did you mean {close[0]}?" if close else
                                                      f"; keys are {', '.join(defaults)}"))
        options[key] = value
    return options


def parse_bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UserError(f"{key}={value}: expected true or false")


def format_seconds(seconds: float | None) -> str:
    """A duration as people read it on a progress line: 45s, 3m07s, 1h12m; '-' when unknown."""
    if seconds is None:
        return "-"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
