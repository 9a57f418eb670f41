"""Index a data set from configuration alone: which clips exist, their ids, labels and groups.

Every contest layout reduces to one table per split (`id, path, label, group`); readers differ only in where
the label and the group come from (a label table, the class folder, or the file name), and whether the files
sit in a folder or inside a zip that is read in place.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from competition.errors import UserError
from competition.task import Task, task_of


def examples(items: list[str], n: int = 3) -> str:
    """The first `n` items and how many more: a message names a few, not thousands."""
    shown = ", ".join(items[:n])
    return f"{shown} and {len(items) - n} more" if len(items) > n else shown


def _utf8(name: str) -> bool:
    """Bytes of a file name that are not UTF-8 come back from the OS as surrogate escapes, which no CSV can hold."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hidden(rel: str) -> bool:
    """Dot files and anything in dot folders (.ipynb_checkpoints, .DS_Store) are never clips."""
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


def _setting(setting: str, key: str) -> str:
    """Where to fix a source's path or subdir: the config key, or the command-line argument (setting 'test')."""
    if setting.startswith("data."):
        return f"{setting}.{key} in the experiment config"
    return f"{setting}= on the command line" if key == "path" else f"{setting}.{key}= on the command line"


class Source:
    """The files under a folder, or under a folder inside a zip kept open (reopening per file is ~50x slower)."""

    def __init__(self, path: str, subdir: str = "", setting: str = "data.*") -> None:
        """`setting` names what gave the path and subdir, for the message when they are wrong: a config section
        (data.train, data.test: the experiment config) or a command-line argument (test: test= and test.subdir=)."""
        self.path = Path(path).expanduser()
        self.subdir = subdir.strip("/")
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise UserError(f"{self.path}: no such folder or zip; check {_setting(setting, 'path')}")
        self.is_zip = self.path.is_file()
        if self.is_zip and not zipfile.is_zipfile(self.path):
            raise UserError(f"{self.path}: not a folder or a readable .zip; check {_setting(setting, 'path')}")
        if not self.is_zip and self.subdir and not (self.path / self.subdir).is_dir():
            raise UserError(f"{self.path / self.subdir}: no such folder; check {_setting(setting, 'subdir')}")

    def __str__(self) -> str:
        return str(self.path / self.subdir) if self.subdir else str(self.path)

    def __getstate__(self) -> dict:  # an open zip cannot cross a process boundary; workers reopen it once
        return {**self.__dict__, "_zip": None}

    @property
    def zip(self) -> zipfile.ZipFile:
        """Names not flagged UTF-8 are read as UTF-8, not cp437: Info-ZIP and macOS write UTF-8 without the flag."""
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path, metadata_encoding="utf-8")
            except UnicodeDecodeError as exc:  # exc.object: the first such name's bytes
                raise UserError(f"{self.path}: a file name inside the zip is not valid UTF-8 ({exc.object!r}); "
                                "rename such files and re-create the zip") from None
        return self._zip

    def files(self) -> list[str]:
        """Every file below the source's root, as sorted posix paths relative to it."""
        if self.is_zip:
            prefix = f"{self.subdir}/" if self.subdir else ""
            names = [n[len(prefix):] for n in self.zip.namelist() if n.startswith(prefix) and not n.endswith("/")]
            names = [n for n in names if not n.startswith("__MACOSX/")]
            escaping = [self._member(n) for n in names if n.startswith("/") or ".." in PurePosixPath(n).parts]
            if escaping:  # such a name is no file of the folder it claims to be in; never skip it as a dot folder
                raise UserError(f"{self.path}: the zip has members whose path has '..' or a leading '/' "
                                f"({examples([repr(n) for n in escaping])}); rename them inside the zip")
        else:
            root = self.path / self.subdir
            names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        return sorted(n for n in names if not _hidden(n))

    def _member(self, rel: str) -> str:
        return f"{self.subdir}/{rel}" if self.subdir else rel

    def read(self, rel: str) -> bytes:
        if self.is_zip:
            return self.zip.read(self._member(rel))
        return (self.path / self.subdir / rel).read_bytes()

    def fingerprint(self, rel: str) -> tuple[int, int]:
        """Size and a change stamp (CRC inside a zip, mtime on disk): enough to notice an edited source."""
        if self.is_zip:
            info = self.zip.getinfo(self._member(rel))
            return info.file_size, info.CRC
        stat = (self.path / self.subdir / rel).stat()
        return stat.st_size, stat.st_mtime_ns

    def open_table(self, table: str) -> tuple[bytes, str]:
        """A label table given relative to the source (also inside a zip) or as an absolute path."""
        if Path(table).expanduser().is_absolute():
            path = Path(table).expanduser()
            if not path.is_file():
                raise UserError(f"{path}: label table not found; check data.train.table")
            return path.read_bytes(), str(path)
        if self.is_zip:  # zip members are plain names: resolve '..' (a table beside the subdir) as a folder would
            member = posixpath.normpath(self._member(table))
            try:
                return self.zip.read(member), f"{self.path}:{member}"
            except KeyError:
                raise UserError(f"{self.path}: no '{member}' inside the zip; check data.train.table") from None
        path = self.path / self.subdir / table
        if not path.is_file():
            raise UserError(f"{path}: label table not found; check data.train.table")
        return path.read_bytes(), str(path)


@dataclass
class Split:
    """One split's clips: `clips` has columns id, path (relative to `source`), and for training label, group."""

    name: str
    source: Source
    clips: pd.DataFrame


def _audio_files(source: Source, extensions: list[str]) -> list[str]:
    allowed = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files = [f for f in source.files() if PurePosixPath(f).suffix.lower() in allowed]
    if not files:
        raise UserError(f"{source}: no audio files ({', '.join(sorted(allowed))}); check the path or data.extensions")
    undecodable = [repr(os.fsencode(f)) for f in files if not _utf8(f)]  # a zip refuses them when opened
    if undecodable:
        raise UserError(f"{source}: {len(undecodable)} file names are not valid UTF-8 ({examples(undecodable)}); "
                        "rename these files")
    by_id: dict[str, list[str]] = {}
    for rel in files:
        by_id.setdefault(_stem_id(rel), []).append(rel)
    clashes = [group for group in by_id.values() if len(group) > 1]
    if clashes:  # x.wav beside x.flac: one id twice would multiply its rows through folds and predictions
        raise UserError(f"{source}: {sum(map(len, clashes))} files share an id with another file "
                        f"({examples([' and '.join(group) for group in clashes])}); "
                        "keep one of each, or narrow data.extensions")
    return files


def _stem_id(rel: str) -> str:
    """A clip's id: its path without the extension (just the file name's stem for a flat folder)."""
    return str(PurePosixPath(rel).with_suffix(""))


def _decode_table(data: bytes, name: str, encoding: str) -> str:
    """The table's text; bytes invalid in `encoding` are named by line and position, not left to pandas."""
    try:
        return data.decode(encoding)
    except LookupError:
        raise UserError(f"data.train.encoding '{encoding}': unknown encoding; use a Python codec name such as "
                        "utf-8, cp1257 or latin-1") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{name}: not valid {encoding} (byte {exc.start}, line {line}); set data.train.encoding "
                        "to the table's encoding (e.g. cp1257, latin-1)") from None


def _read_table(source: Source, cfg: DictConfig, task: Task) -> pd.DataFrame:
    """The label table as strings with columns id, label[, group]; bad lines named by number. A multi-label table's
    label is its label column (classes joined by data.train.label_separator; empty for none), or built from one 0/1
    column per class (data.train.label_columns)."""
    data, name = source.open_table(cfg.table)
    text = _decode_table(data, name, cfg.encoding)
    delimiter = cfg.delimiter or ("\t" if name.lower().endswith(".tsv") else ",")
    try:
        table = pd.read_csv(io.StringIO(text), sep=delimiter, header=0 if cfg.header else None, dtype=str,
                            keep_default_na=False, skip_blank_lines=True, engine="python")
    except pd.errors.ParserError as exc:
        raise UserError(f"{name}: malformed line ({str(exc).splitlines()[-1].strip()}); fix it or the delimiter") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{name}: the label table is empty") from None
    first_line = 2 if cfg.header else 1
    if not cfg.header:
        if table.shape[1] < 2:
            raise UserError(f"{name}: expected lines 'id{delimiter!r}label', found one column; check data.train.delimiter")
        table.columns = ["id", "label", "group", *[f"column{i}" for i in range(3, table.shape[1])]][: table.shape[1]]
    by_class = list(cfg.label_columns) if task.multilabel else []
    wanted = {"id": cfg.id_column} | ({} if by_class else {"label": cfg.label_column})
    if cfg.group_column:
        wanted["group"] = cfg.group_column
    missing = [c for c in [*wanted.values(), *by_class] if c not in table.columns]
    if missing:
        raise UserError(f"{name}: no column {', '.join(map(repr, missing))}; columns are {', '.join(map(str, table.columns))}"
                        f" (set data.train.id_column / label_column / label_columns / group_column, or header=false)")
    if by_class:
        table = table.assign(label=_labels_from_columns(table[by_class], name, first_line, task))
        wanted["label"] = "label"
    table = table[list(wanted.values())].set_axis(list(wanted), axis=1)
    for column in wanted:
        values = table[column].fillna("").str.strip()  # a line with too few fields reads as missing (NaN)
        empty = (values == "").to_numpy().nonzero()[0]
        if len(empty) and not (column == "label" and task.multilabel):  # a multi-label clip may hold no class
            lines = [str(i + first_line) for i in empty]
            raise UserError(f"{name}: empty {column} on line {examples(lines)}; fix or remove those lines")
        table[column] = values.map(lambda label: task.join(task.split(label))) if column == "label" else values
    dupes = table["id"][table["id"].duplicated()].tolist()
    if dupes:
        raise UserError(f"{name}: id listed twice: {examples(dupes)}; each clip needs one label")
    return table


def _labels_from_columns(columns: pd.DataFrame, name: str, first_line: int, task: Task) -> pd.Series:
    """One 0/1 column per class as each clip's label string (the classes marked 1)."""
    values = columns.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | ~values.isin([0, 1])
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        raise UserError(f"{name}: line {row + first_line}, column {columns.columns[column]!r} is "
                        f"{columns.iat[row, column]!r}; class columns (data.train.label_columns) hold 0 or 1")
    return pd.Series([task.join([c for c, v in zip(columns.columns, row) if v == 1]) for row in values.to_numpy()],
                     index=columns.index)


def _match_table(table: pd.DataFrame, files: list[str], source: Source, strict: bool) -> pd.DataFrame:
    """Pair table ids with audio files; an id may be given with or without its extension."""
    by_key = {f: f for f in files} | {_stem_id(f): f for f in files}
    table = table.assign(path=table["id"].map(by_key))
    twice = table["path"][table["path"].duplicated(keep=False)].dropna()
    if len(twice):  # e.g. ids 'a' and 'a.wav': one clip, two labels
        ids = table.loc[twice.index, "id"].tolist()
        raise UserError(f"{source}: ids {examples(ids)} name the same audio file; each clip needs one label")
    no_audio = table.loc[table["path"].isna(), "id"].tolist()
    unlabelled = sorted(set(files) - set(table["path"].dropna()))
    problems = []
    if no_audio:
        problems.append(f"{len(no_audio)} ids in the label table have no audio file ({examples(no_audio)})")
    if unlabelled:
        problems.append(f"{len(unlabelled)} audio files have no label ({examples(unlabelled)})")
    if problems and strict:
        raise UserError(f"{source}: {'; '.join(problems)}; fix the table or set data.strict=false to leave them out")
    for problem in problems:
        print(f"warning: {source}: {problem}; left out", file=sys.stderr)
    table = table.dropna(subset=["path"])
    if table.empty:
        raise UserError(f"{source}: no labelled audio after matching the table; check the ids against the file names")
    return table


def _filename_fields(files: list[str], pattern: str, source: Source) -> pd.DataFrame:
    """Named groups `label` and `group` of a regex matched against each file name's stem."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"data.train.filename_regex: invalid regex ({exc})") from None
    fields = []
    unmatched = []
    for rel in files:
        match = regex.fullmatch(PurePosixPath(rel).stem)
        if match is None:
            unmatched.append(rel)
        else:
            fields.append(match.groupdict())
    if unmatched:
        raise UserError(f"{source}: {len(unmatched)} file names do not match data.train.filename_regex "
                        f"'{pattern}' ({examples(unmatched)}); fix the regex or move those files")
    return pd.DataFrame(fields, index=range(len(files)), columns=list(regex.groupindex))


def index_train(cfg: DictConfig) -> Split:
    """The labelled clips, with a group per clip (the clip itself when no group rule is configured)."""
    spec, task = cfg.data.train, task_of(cfg)
    source = Source(spec.path, spec.subdir, "data.train")
    files = _audio_files(source, cfg.data.extensions)
    regex_fields = _filename_fields(files, spec.filename_regex, source) if spec.filename_regex else None
    if spec.layout == "table":
        if not spec.table:
            raise UserError("data.train.table is empty: name the label table (e.g. targets.tsv) for layout 'table'")
        clips = _match_table(_read_table(source, spec, task), files, source, cfg.data.strict)
        if regex_fields is not None:
            clips = clips.merge(regex_fields.drop(columns=["label"], errors="ignore").set_index(pd.Index(files)),
                                left_on="path", right_index=True, how="left", suffixes=("", "_regex"))
    else:
        clips = pd.DataFrame({"id": [_stem_id(f) for f in files], "path": files})
        if regex_fields is not None:
            clips = pd.concat([clips, regex_fields], axis=1)
        if spec.layout == "class_folders":
            nested = [f for f in files if "/" in f]
            if len(nested) != len(files):
                loose = sorted(set(files) - set(nested))
                raise UserError(f"{source}: {len(loose)} files lie outside any class folder ({examples(loose)}); "
                                "layout 'class_folders' expects <label>/<file>")
            clips["label"] = [f.split("/", 1)[0] for f in files]
        elif spec.layout == "filename":
            if regex_fields is None or "label" not in regex_fields:
                raise UserError("layout 'filename' needs data.train.filename_regex with a (?P<label>...) group")
        else:
            raise UserError(f"data.train.layout '{spec.layout}' gives no labels; use table, class_folders or filename")
    if "group" not in clips or clips["group"].isna().all():
        clips["group"] = clips["id"]
    clips = clips[["id", "path", "label", "group"]].astype(str).reset_index(drop=True)
    classes = task.classes(clips["label"])
    if len(classes) < 2:
        found = f"only one class ({classes[0]})" if classes else "no class"
        raise UserError(f"{source}: {found} found; a classifier needs at least two")
    return Split("train", source, clips)


def index_test(cfg: DictConfig) -> Split | None:
    """The unlabelled test clips (every audio file under the test source), or None when there is no test set."""
    spec = cfg.data.test
    if spec is None or not spec.path:
        return None
    source = Source(spec.path, spec.subdir, "data.test")
    files = _audio_files(source, cfg.data.extensions)
    return Split("test", source, pd.DataFrame({"id": [_stem_id(f) for f in files], "path": files}))


def with_test_source(cfg: DictConfig, source: dict) -> DictConfig:
    """`cfg` with its test set replaced by `source` (a path and source keys such as subdir: every audio file under it,
    ids from file names), the way predict and blend read a named test set. The source came from test= (and test.<key>=)
    on the command line, not from the config, so a path or subdir that is not there is refused here, naming those."""
    Source(str(source["path"]), str(source.get("subdir") or ""), "test")
    cfg = cfg.copy()
    OmegaConf.set_readonly(cfg, False)  # experiments are loaded read-only
    cfg.data.test = None
    return OmegaConf.merge(cfg, {"data": {"test": {"layout": "files", **source}}})
