"""Pseudo-label rounds: label the test clips (or a set predict named) with finished experiments' fold models, and
train a new experiment on them beside the labelled clips; fold k is labelled by the sources' fold k models alone, so
its OOF score stays honest (competition.labels says why a blend of all folds would leak).

    python -m competition.pseudo exps=a[,b] [rounds=1] [threshold=0.9] [targets=hard|soft] [test=<set name>]
                                 [name=<first exp>_pl] [device=auto] [train=true] [overwrite=true]
                                 [<config key>=<value> ...]

Round r is the experiment <name><r> (a_pl1, a_pl2, ...). Its experiments/<name><r>/config.yaml names the first
source's config as its base, sets its `pseudo` section (labelled by exps= in round one, by the round before in each
later one) and adds the config keys given here: a noisy student is a round with stronger augmentation or mixup, e.g.
augment.mixup.p=0.8. Its folds are trained here one after another, finished current folds skipped as run skips them;
train=false only writes round one's config, to train it on a queue (python -m competition.run exp=a_pl1 fold=all
gpus=0,1). A round whose config says otherwise is refused unless overwrite=true. With test=<name>, each round predicts
that set (as competition.predict name=<name>) so that the next round can be labelled from it.

A round goes stale, fold by fold, when the predictions that labelled it change; blend and run then say which fold and
why. Blend each round like any experiment: python -m competition.blend exps=a_pl1.
"""
from __future__ import annotations

from competition.cli import exit_on_help

if __name__ == "__main__":
    exit_on_help(__doc__)  # before the imports below: --help needs none of torch, timm or librosa

from omegaconf import OmegaConf

from competition import predict, run
from competition.cli import main_guard, parse_bool
from competition.config import EXPERIMENTS_DIR, load_experiment, parse_cli, parse_overrides
from competition.errors import UserError
from competition.files import atomic_write_text
from competition.predictions import recorded_source

COMMAND_KEYS = {"exps": "", "rounds": "1", "threshold": "0.9", "targets": "hard", "test": "", "name": "",
                "device": "auto", "train": "true", "overwrite": "false"}


def round_config(base: str, sources: list[str], options: dict, overrides: list[str]) -> str:
    """A round's config.yaml: the first source's config as its base, the pseudo section, the given config keys."""
    layer = OmegaConf.merge({"base": f"../{base}/config.yaml",
                             "pseudo": {"source": sources, "test": options["test"],
                                        "threshold": float(options["threshold"]), "targets": options["targets"]}},
                            parse_overrides(overrides))
    return "# a pseudo-label round, written by python -m competition.pseudo\n" + OmegaConf.to_yaml(layer)


def write_round(name: str, text: str, overwrite: bool) -> None:
    """experiments/<name>/config.yaml, checked by loading it; a different one already there is kept unless
    overwrite=true, and one that does not load is put back as it was."""
    path = EXPERIMENTS_DIR / name / "config.yaml"
    before = path.read_text() if path.is_file() else None
    if before == text:
        return
    if before is not None and not overwrite:
        raise UserError(f"{path} exists and says otherwise; pass overwrite=true to replace it (its finished folds "
                        "then go stale), or choose another name=")
    atomic_write_text(path, text)
    try:
        load_experiment(name)
    except UserError:
        if before is None:
            path.unlink()
            path.parent.rmdir()
        else:
            atomic_write_text(path, before)
        raise


def predict_named_set(experiment: str, labelled_by: str, name: str, device: str) -> None:
    """The round's folds predict the set `name` where the round before them read it, for the next round's labels."""
    source = recorded_source(labelled_by, name)
    extra = [f"test.{key}={value}" for key, value in source.items() if key != "path" and value not in ("", None)]
    predict.main([f"exps={experiment}", f"test={source['path']}", f"name={name}", f"device={device}",
                  "overwrite=true", *extra])


def check_options(options: dict) -> tuple[int, list[str]]:
    rounds = options["rounds"]
    if not rounds.isdigit() or int(rounds) < 1:
        raise UserError(f"rounds={rounds}: give how many rounds to train, 1 or more")
    try:
        threshold = float(options["threshold"])
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"threshold={options['threshold']}: give how sure a clip's labels must be for it to be "
                        "kept, a probability in [0, 1] (e.g. 0.9)")
    if options["targets"] not in ("hard", "soft"):
        raise UserError(f"targets={options['targets']}: choose hard (the most likely class) or soft (the "
                        "probabilities)")
    sources = list(dict.fromkeys(n.strip() for n in options["exps"].split(",") if n.strip()))
    if not sources:
        raise UserError("exps= is missing: name the finished experiments whose folds label the clips")
    for source in sources:
        if not (EXPERIMENTS_DIR / source / "config.yaml").is_file():
            raise UserError(f"exps: experiment '{source}' not found ({EXPERIMENTS_DIR / source / 'config.yaml'})")
    for key in ("name", "test"):
        if "/" in options[key] or options[key].startswith("."):
            raise UserError(f"{key}={options[key]}: give a plain name, not a path")
    if int(rounds) > 1 and not parse_bool("train", options["train"]):
        raise UserError("train=false with rounds > 1: each round is labelled by the trained round before it; "
                        "train=false writes round one only (rounds=1)")
    return int(rounds), sources


def main(argv: list[str]) -> None:
    options, overrides = parse_cli(argv, COMMAND_KEYS)
    rounds, sources = check_options(options)
    train, overwrite = parse_bool("train", options["train"]), parse_bool("overwrite", options["overwrite"])
    stem = options["name"] or f"{sources[0]}_pl"
    labelled_by, written = sources, []
    for number in range(1, rounds + 1):
        name = f"{stem}{number}"
        write_round(name, round_config(sources[0], labelled_by, options, overrides), overwrite)
        written.append(name)
        print(f"round {number}: {EXPERIMENTS_DIR / name / 'config.yaml'}, labelled by {', '.join(labelled_by)} "
              f"(fold k by their fold k alone), threshold {options['threshold']}, {options['targets']} targets")
        if not train:
            print(f"train it with python -m competition.run exp={name} fold=all (gpus=, workers= or launcher=ray for "
                  "a queue)")
            return
        run.main([f"exp={name}", "fold=all", f"device={options['device']}"])
        if options["test"] and number < rounds:
            predict_named_set(name, labelled_by[0], options["test"], options["device"])
        labelled_by = [name]
    print(f"rounds {', '.join(written)} trained; compare them with python -m competition.blend "
          f"exps={written[-1]} and exps={','.join(sources)}")


if __name__ == "__main__":
    main_guard(main)
