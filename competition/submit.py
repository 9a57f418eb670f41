"""Upload an answer file to a Kaggle competition, or record its public leaderboard score, in submissions/log.csv.

    python -m competition.submit <answer file> [message=<text>] [competition=<slug>]   # upload it
    python -m competition.submit <answer file> lb=<score>                              # record its public score

The answer file is one that blend or predict wrote, as it is now: each logs the file's hash in submissions/log.csv,
with its OOF and holdout scores, and a file changed since (or written by hand) is refused before anything is uploaded
or recorded. A path with `=` in its name can be given as file=<path>.

Uploading runs the official Kaggle client, `kaggle competitions submit -c <slug> -f <file> -m <message>`, which needs
`pip install kaggle` and an API token: kaggle.com, Settings (the Account page), API, Create New Token downloads
kaggle.json, which goes to ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json); KAGGLE_USERNAME and KAGGLE_KEY
(or KAGGLE_API_TOKEN) in the environment do as well. The competition is competition=<slug> (the part of its address
after kaggle.com/competitions/) or the environment variable KAGGLE_COMPETITION. message= is the description shown in
the competition's list of your submissions; without it, the file's experiments and local scores. A successful upload
is logged (time and message) against the file's row; a failed one logs nothing. Code competitions take no uploaded
file: submit from the notebook (see competition.pack), then record the score here with lb=.

lb=<score> uploads nothing: it records the public leaderboard score against the file's row, replacing one recorded
before, and prints it beside the file's OOF and holdout scores, to see whether local scores and the leaderboard move
together.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from competition.cli import main_guard
from competition.errors import UserError

COMMAND_KEYS: dict[str, str | None] = {"file": "", "message": "", "lb": None, "competition": ""}  # lb= alone: refused
SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
UPLOAD_TIMEOUT_S = 900.0  # an answer file is megabytes at most; a client silent this long is stuck


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """key=value options as parse_cli reads them, and the answer file as a bare argument (or file=<path>; a bare
    argument with '=' in it is taken for a path when no option has its key and such a file exists)."""
    options = dict(COMMAND_KEYS)
    files = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in COMMAND_KEYS:
            if key == "file":
                files.append(value)
            else:
                options[key] = value
        elif not sep or Path(arg).is_file():
            files.append(arg)
        else:
            raise UserError(f"'{arg}' is not a submit option: give the answer file and message=, competition= or lb= "
                            "(a path with '=' in it: file=<path>)")
    if len(set(files)) > 1:
        raise UserError(f"one answer file at a time (got {', '.join(files)})")
    if not files or not files[0]:
        raise UserError("give the answer file: python -m competition.submit submissions/<name>.csv [message=...]")
    options["file"] = files[0]
    return options


def logged(answer: Path) -> dict[str, str]:
    """The log's newest row of `answer` as it is now; a file not logged so is refused (leaderboard.logged_row)."""
    from competition.leaderboard import logged_row, read_log

    log = read_log()
    return log.loc[logged_row(log, answer)].to_dict()


def scores(row: dict[str, str]) -> str:
    if not row["oof"] and not row["holdout"]:
        return "no local scores (written by predict)"
    return f"{row['metric']} OOF {row['oof'] or '-'}, holdout {row['holdout'] or '-'}"


def record_score(answer: Path, value: str) -> str:
    """Record the public leaderboard score of a logged answer file; the line that says so."""
    from competition.leaderboard import LOG, record_lb

    try:
        score = float(value)
    except ValueError:
        raise UserError(f"lb={value}: give the public leaderboard score as a number (e.g. lb=0.912)") from None
    before = logged(answer)
    record_lb(answer, score)
    after = logged(answer)
    replaced = f" (replacing {before['lb']})" if before["lb"] and before["lb"] != after["lb"] else ""
    return f"{answer}: {scores(after)}, public LB {after['lb']}{replaced}; recorded in {LOG}"


def competition_slug(given: str) -> str:
    slug = given or os.environ.get("KAGGLE_COMPETITION", "")
    if not slug:
        raise UserError("which competition? pass competition=<slug> (the part of its address after "
                        "kaggle.com/competitions/) or set KAGGLE_COMPETITION")
    if not SLUG.fullmatch(slug):
        source = "competition=" if given else "KAGGLE_COMPETITION="
        raise UserError(f"{source}{slug}: give the competition's slug, the part of its address after "
                        "kaggle.com/competitions/ (e.g. birdclef-2025)")
    return slug


def kaggle_json_places() -> list[Path]:
    """Where the Kaggle client reads kaggle.json: $KAGGLE_CONFIG_DIR when set, else ~/.kaggle (newer clients on Linux,
    when ~/.kaggle is absent, $XDG_CONFIG_HOME/kaggle or ~/.config/kaggle)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"]
    home = Path(os.path.expanduser("~"))
    return [home / ".kaggle" / "kaggle.json",
            Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle" / "kaggle.json"]


def has_credentials() -> bool:
    """Whether the Kaggle client has something to authenticate with (whether it is valid, the client finds out)."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    if env.get("KAGGLE_ENABLE_OAUTH", "").lower() in ("1", "true", "yes"):  # `kaggle auth login`: the client knows
        return True
    home = Path(os.path.expanduser("~"))
    return any(path.is_file() for path in (*kaggle_json_places(), home / ".kaggle" / "access_token",
                                           home / ".kaggle" / "access_token.txt"))


def kaggle_client() -> str:
    """The Kaggle command-line client, installed and given credentials; otherwise the step that is missing."""
    client = shutil.which("kaggle")
    if client is None:
        raise UserError("the Kaggle client is not installed (no kaggle command on PATH): pip install kaggle")
    if not has_credentials():
        target = (f"{kaggle_json_places()[0]} (KAGGLE_CONFIG_DIR)" if os.environ.get("KAGGLE_CONFIG_DIR") else
                  "~/.kaggle/kaggle.json")
        raise UserError(f"no Kaggle credentials: on kaggle.com, Settings (the Account page), API, Create New Token "
                        f"downloads kaggle.json; save it as {target} (chmod 600), or set KAGGLE_USERNAME and "
                        "KAGGLE_KEY")
    return client


def default_message(answer: Path, row: dict[str, str]) -> str:
    try:
        experiments = ", ".join(json.loads(row["experiments"] or "[]"))
    except (ValueError, TypeError):
        experiments = row["experiments"]
    return f"{answer.name} ({experiments}): {scores(row)}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def upload(client: str, answer: Path, slug: str, message: str) -> None:
    """`kaggle competitions submit`, no shell between; a failure (the client's exit code, or its 'Could not ...'
    line, which it prints with exit code 0 for an unknown competition or an interrupted upload) is one line."""
    command = [client, "competitions", "submit", "-c", slug, "-f", answer.as_posix(), "-m", message]
    size = answer.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} bytes"
    print(f"uploading {answer} ({shown}) to {slug} with the Kaggle client ...", file=sys.stderr)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=UPLOAD_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"the Kaggle client did not finish within {UPLOAD_TIMEOUT_S:.0f} s and was stopped; nothing "
                        f"recorded: see whether the submission arrived (kaggle competitions submissions {slug}) "
                        "before submitting again") from None
    except OSError as exc:
        raise UserError(f"{client}: cannot run the Kaggle client ({exc.strerror or exc}); nothing recorded") from None
    said = last_line(result.stderr) or last_line(result.stdout) or "no output"
    refused = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("Could not")]
    if result.returncode != 0:
        raise UserError(f"kaggle competitions submit failed (exit code {result.returncode}): {said}; nothing recorded")
    if refused:
        raise UserError(f"kaggle competitions submit failed (exit code 0): {refused[-1]}; nothing recorded")


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    answer = Path(options["file"])
    if options["lb"] is not None:  # never an upload, even with the score left out
        if options["message"]:
            raise UserError("lb= records a leaderboard score and uploads nothing; message= goes with an upload: "
                            "drop one")
        print(record_score(answer, options["lb"]))
        return
    from competition.leaderboard import LOG, record_submitted

    row = logged(answer)  # refused before anything else is checked, let alone uploaded
    slug = competition_slug(options["competition"])
    client = kaggle_client()
    message = options["message"] or default_message(answer, row)
    upload(client, answer, slug, message)
    record_submitted(answer, message)
    print(f"{answer}: submitted to {slug} ({scores(row)}), message '{message}', recorded in {LOG}; when its public "
          f"score shows, record it: python -m competition.submit {answer} lb=<score>")


if __name__ == "__main__":
    main_guard(main)
