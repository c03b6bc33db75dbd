"""Where a user's rows come from: `data.source` -> each split's rows, read lazily from disk.

    resolve_source(options, data_dir) -> SourceSpec   what to read, and a fingerprint of it (cheap: stat only)
    load_split(spec, split)           -> RawSplit     the split's rows, each with where it came from

`data.source` is one of:
- a file in a format `datasets` reads (jsonl, json, csv, tsv, parquet, arrow; `.gz` allowed for text formats):
  its rows are the `train` split;
- a mapping of split name to a file, a glob, or a list of them (`{train: a.jsonl, validation: b/*.jsonl}`), as
  `datasets.load_dataset(..., data_files=...)` takes; every file must exist and every glob match;
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: its splits;
- a directory of files: files whose name holds train / dev, valid, validation / test are those splits
  (every file is `train` when none does);
- a glob of shards (`data/part-*.parquet`): all of them are `train`;
- a Hub dataset id (`org/name`, with data.source_config and data.source_revision), only when online.

Splits are lorafit's names: `train`, `dev` (a source's `validation`, `valid` or `val`), `test`.
JSON Lines and JSON files are streamed by the one JSON reader (data/jsonrows.py): each row is named by its
line in the file. The columnar ones (CSV, TSV, parquet, arrow, saved, Hub) are read by `datasets` into
memory-mapped Arrow: each row is named by its row number (CSV: the data row, the header not counted).
CSV/TSV cells are read as text exactly as written ("NA" stays "NA", "007" stays "007"), as the hand-written
readers did; TSV without quoting (a `"` is an ordinary character, as in GLUE).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lorafit.data.jsonrows import json_rows
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig

SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
# suffix -> (datasets builder, its options); CSV/TSV keep every cell a string (pandas would turn "NA" into NaN)
_TEXT_CELLS = {"keep_default_na": False, "na_filter": False}
BUILDERS = {
    ".jsonl": ("json", {}), ".json": ("json", {}), ".ndjson": ("json", {}),
    ".csv": ("csv", _TEXT_CELLS), ".tsv": ("csv", {**_TEXT_CELLS, "sep": "\t", "quoting": csv.QUOTE_NONE}),
    ".parquet": ("parquet", {}), ".arrow": ("arrow", {}),
}
TEXT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class SourceSpec:
    """What `data.source` names: local files per split, a save_to_disk directory, or a Hub dataset."""

    source: str
    kind: str  # "files", "saved" (save_to_disk dir) or "hub"
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)  # kind files: split -> its files
    path: Path | None = None  # kind saved
    config: str | None = None
    revision: str | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        if self.kind == "files":
            return tuple(self.files)
        if self.kind == "saved":
            return _saved_splits(self.path)
        return ("train", "dev", "test")  # a Hub dataset: known only after download; missing ones fail then

    def fingerprint(self) -> str:
        """Changes whenever the data may have: every file's path, size and mtime (no content read), or
        the Hub id + config + revision. Cheap, so a warm start never opens the data."""
        h = hashlib.sha256(f"{self.kind}|{self.source}|{self.config}|{self.revision}".encode())
        paths = [p for split in sorted(self.files) for p in self.files[split]] if self.kind == "files" else (
            sorted(p for p in self.path.rglob("*") if p.is_file()) if self.kind == "saved" else [])
        for p in paths:
            st = p.stat()
            h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]


@dataclass
class RawSplit:
    """A split's rows, file by file: a JSON file (streamed, each row named by its line) or an Arrow dataset
    (each row named by its row number). `rows()` yields (where, row): where is "train.jsonl line 12"."""

    parts: list[tuple[str, object]]  # (name in messages, Path of a JSON file or a datasets.Dataset)

    def rows(self) -> Iterator[tuple[str, dict]]:
        for name, part in self.parts:
            if isinstance(part, Path):
                yield from ((f"{name} line {line}", row) for line, row in json_rows(part))
                continue
            number = 0
            for batch in part.iter(batch_size=1000):
                columns = list(batch)
                for j in range(len(batch[columns[0]]) if columns else 0):
                    number += 1
                    yield f"{name} row {number}", {c: batch[c][j] for c in columns}

    def num_rows(self) -> int:
        """Rows in the split (JSON files are read through to count them)."""
        return sum(sum(1 for _ in json_rows(p)) if isinstance(p, Path) else len(p) for _, p in self.parts)


def is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    return suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")


def _split_of(path: Path) -> str | None:
    # a word of the name that starts with a split name: train.jsonl, trainset.csv.gz, dev-00001.parquet, validation
    words = re.split(r"[^a-z]+", path.name.lower())
    return next((SPLIT_ALIASES[a] for w in words for a in ("train", "validation", "valid", "val", "dev", "test")
                 if w.startswith(a)), None)


def _saved_splits(path: Path) -> tuple[str, ...]:
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return tuple(SPLIT_ALIASES.get(n, n) for n in names)
    return ("train",)


def _readable(paths: list[Path], what: str) -> list[Path]:
    bad = [p for p in paths if _suffix(p) not in BUILDERS]
    if bad:
        raise DataError(f"data.source: {bad[0]} ({what}): unknown format; use one of {', '.join(BUILDERS)}")
    return paths


def _local(name: str, data_dir: Path | None) -> Path:
    raw = Path(name).expanduser()
    return raw if raw.is_absolute() or data_dir is None else Path(data_dir) / raw


def _matches(name: str, data_dir: Path | None, key: str) -> list[Path]:
    """The files a path or glob names; none is an error naming the key."""
    path = _local(name, data_dir)
    if any(c in name for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{key}: the glob {str(path)!r} matches no file")
        return _readable(files, "from the glob")
    if not path.is_file():
        raise DataError(f"{key}: {path} not found" + (" (a directory: name its files, or a glob)" if path.is_dir() else ""))
    return _readable([path], key)


def _split_files(mapping: dict, data_dir: Path | None) -> SourceSpec:
    """`data.source: {train: a.jsonl, validation: [b.jsonl, c/*.jsonl]}` -> files per lorafit split."""
    files: dict[str, tuple[Path, ...]] = {}
    for given, names in mapping.items():
        split = SPLIT_ALIASES.get(given, given)
        if split in files:
            raise DataError(f"data.source: {given!r} and another key are both the {split!r} split")
        key = f"data.source.{given}"
        files[split] = tuple(f for name in ([names] if isinstance(names, str) else names)
                             for f in _matches(name, data_dir, key))
    return SourceSpec(json.dumps(mapping, sort_keys=True), "files", files)


def resolve_source(options: DataConfig, data_dir: Path | None) -> SourceSpec:
    """The SourceSpec for `data.source` (relative paths and globs are taken from the data directory)."""
    name = options.source
    if isinstance(name, dict):
        return _split_files(name, data_dir)
    raw = Path(name).expanduser()
    path = _local(name, data_dir)
    if any(c in name for c in "*?["):
        return SourceSpec(name, "files", {"train": tuple(_matches(name, data_dir, "data.source"))})
    if path.is_file():
        return SourceSpec(name, "files", {"train": tuple(_readable([path], "data.source"))})
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return SourceSpec(name, "saved", path=path)
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in BUILDERS and not p.name.startswith("."))
        if not files:
            raise DataError(f"data.source: {path} holds no data file ({', '.join(BUILDERS)}) and no save_to_disk dataset")
        splits: dict[str, list[Path]] = {}
        for f in files:
            splits.setdefault(_split_of(f) or "?", []).append(f)
        if set(splits) == {"?"}:
            return SourceSpec(name, "files", {"train": tuple(files)})
        return SourceSpec(name, "files", {s: tuple(fs) for s, fs in splits.items() if s != "?"})
    looks_local = raw.is_absolute() or name.startswith((".", "~")) or _suffix(raw) in BUILDERS or name.count("/") > 1
    if looks_local:
        raise DataError(f"data.source: {path} not found")
    if is_offline():
        raise DataError(
            f"data.source: {name!r} is not a local file or directory and the Hub is offline (HF_HUB_OFFLINE); "
            f"where you have network run `python -c \"import datasets; datasets.load_dataset('{name}').save_to_disk('DIR')\"` "
            "(or `hf download --repo-type dataset " + name + " --local-dir DIR`) and set data.source: DIR"
        )
    return SourceSpec(name, "hub", config=options.source_config, revision=options.source_revision)


def check_utf8(path: Path) -> None:
    """Fail with the file, line and byte offset of the first byte that is not UTF-8 (streamed: flat memory).

    For CSV/TSV, which `datasets` reads; JSON files are checked by their reader (data/jsonrows.py)."""
    if _suffix(path) not in TEXT_SUFFIXES or path.suffix.lower() == ".gz":
        return
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                at = offset + e.start
                line = lines + chunk.count(b"\n", 0, max(0, e.start))
                raise DataError(f"{path} is not UTF-8: byte 0x{chunk[e.start]:02x} at offset {at} (line {line})") from None
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _header(path: Path, kwargs: dict) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        first = f.readline().rstrip("\r\n")
        if not first:
            raise DataError(f"{path} is empty" if path.stat().st_size == 0 else f"{path} has no header row (line 1 is blank)")
        if not any(line.strip() for line in f):  # stops at the first data row; datasets' own message is obscure
            raise DataError(f"{path} has no data rows (only the header)")
    return first.split("\t") if kwargs.get("sep") == "\t" else next(csv.reader([first]))


def _load_file(path: Path):
    """A columnar file as memory-mapped Arrow (JSON files are streamed instead: RawSplit.rows)."""
    import datasets

    builder, kwargs = BUILDERS[_suffix(path)]
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    check_utf8(path)
    if builder == "csv":  # every column a string, as written (the header names them)
        kwargs = {**kwargs, "features": datasets.Features({n: datasets.Value("string") for n in _header(path, kwargs)})}
    try:
        ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", **kwargs)
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas parse errors come in many types; one line for the user
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {path} as {builder}: {message}") from None
    if len(ds) == 0:
        raise DataError(f"{path} has no data rows")
    return ds


def load_split(spec: SourceSpec, split: str) -> RawSplit:
    """The rows of `split` (lorafit's name), memory-mapped Arrow; one load per file so errors name the file."""
    import datasets

    if split not in spec.splits:
        raise DataError(f"data.source {spec.source!r} has no split {split!r} (splits: {', '.join(spec.splits)}); "
                        "set data.valid_split, or data.valid_fraction to carve one out of train")
    if spec.kind == "files":
        return RawSplit([(str(path), path if _suffix(path) in JSON_SUFFIXES else _load_file(path))
                         for path in spec.files[split]])
    if spec.kind == "saved":
        loaded = datasets.load_from_disk(str(spec.path))
        if isinstance(loaded, datasets.DatasetDict):
            names = {SPLIT_ALIASES.get(n, n): n for n in loaded}
            loaded = loaded[names[split]]
        return RawSplit([(f"{spec.path} ({split})", loaded)])
    hub_names = [n for n, s in SPLIT_ALIASES.items() if s == split]
    try:
        found = datasets.get_dataset_split_names(spec.source, spec.config, revision=spec.revision)
        name = next((n for n in found if n in hub_names), None)
        if name is None:
            raise DataError(f"data.source {spec.source!r} has no split {split!r} (splits: {', '.join(found)})")
        dataset = datasets.load_dataset(spec.source, spec.config, split=name, revision=spec.revision)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"data.source {spec.source!r}: cannot load from the Hub: {str(e).strip().splitlines()[0]}") from None
    return RawSplit([(f"{spec.source} ({name})", dataset)])
