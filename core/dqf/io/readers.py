"""Reads an input file or folder of shards into canonical rows, accounting for every bad row."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from dqf.errors import DataError, require
from dqf.io.rows import BadRow, canonicalize, conversation
from dqf.io.values import parse_constant, to_raw

#: What a file's name may end in; ``.gz`` / ``.zst`` on a JSON(L) file is decompressed on reading.
SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow", ".csv", ".tsv", ".jsonl.gz", ".json.gz", ".jsonl.zst",
            ".json.zst")
#: What Hugging Face `save_to_disk` writes beside its .arrow shards: metadata, never rows.
HF_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")
#: Unique rows gathered as Python objects before they are turned into columns (bounds the reader's memory).
CHUNK_ROWS = 65_536
_WS = re.compile(r"\s*")
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass
class ReadResult:
    frame: Any  # polars.DataFrame: id, instruction, input, output, n_turns, copies, _source, _raw
    quarantined: list[dict] = field(default_factory=list)
    rows_read: int = 0
    duplicates: int = 0
    files: list[dict] = field(default_factory=list)


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def inside_input(input_path: Path, folder: Path, key: str) -> str | None:
    """Why ``folder`` (the recipe's ``key``) cannot be where it is, or None: a folder input is read recursively,
    so an output or cache folder inside it would be read back as input rows by the next run."""
    try:
        source, target = input_path.resolve(), folder.resolve()
    except OSError:
        return None
    if not source.is_dir() or not target.is_relative_to(source):
        return None
    return (f"{key}: {display_path(folder)} is inside the input folder {display_path(input_path)}, which is read "
            f"recursively: the next run would read this run's files back as input rows; put {key} outside it")


_GLOB = re.compile(r"[*?\[]")
#: Split names recognised without `input.split` (to refuse reading several at once).
KNOWN_SPLITS = ("train", "test", "validation", "valid", "dev", "eval")
# Hugging Face Hub shard names: train-00000-of-00002.parquet
_HUB_SHARD = re.compile(r"^(.+?)-\d+-of-\d+(?:\.|$)")


def _split_names(rel: Path) -> set[str]:
    """The split names a file's path (relative to the input root) carries: a Hub shard prefix, its stem, a folder."""
    name = rel.name
    names = {name.split(".", 1)[0]} | {part for part in rel.parts[:-1]}
    hub = _HUB_SHARD.match(name)
    if hub:
        names.add(hub.group(1))
    return names


def _hf_metadata(p: Path) -> bool:
    """A metadata file of a Hugging Face `save_to_disk` folder (a Dataset's, or a DatasetDict's split list)."""
    if p.name == "dataset_dict.json":
        return True
    return p.name in HF_METADATA and (p.parent / "state.json").is_file() and any(p.parent.glob("*.arrow"))


def _hf_splits(root: Path) -> set[str]:
    """The split names a DatasetDict saved at ``root`` lists (empty for anything else)."""
    try:
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {s for s in splits if isinstance(s, str)}


def input_files(path: Path, split: str | None = None) -> list[Path]:
    """The data files ``input.path`` names: one file, every data file below a folder, or a glob's matches (sorted);
    with ``split``, only that split's files (Hub shard names, file stems or folder names)."""
    shown = display_path(path)
    if _GLOB.search(str(path)):
        import glob

        first = next(i for i, part in enumerate(path.parts) if _GLOB.search(part))
        root = Path(*path.parts[:first]) if first else Path(".")  # split names are read below the fixed part
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                       if Path(p).is_file() and p.endswith(SUFFIXES))
        if not files:
            raise DataError(f"input.path: no {', '.join(SUFFIXES)} file matches {shown}")
    elif not path.exists():
        raise DataError(f"input.path: no such file or folder: {shown}")
    elif path.is_file():
        if not path.name.endswith(SUFFIXES):
            raise DataError(f"input.path: {shown}: unsupported file type (use {', '.join(SUFFIXES)})")
        if split is not None:
            raise DataError(f"input.split: {shown} is one file; split chooses among the files of a folder or glob")
        return [path]
    else:
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
                       and not _hf_metadata(p))
        if not files:
            raise DataError(f"input.path: folder {shown} holds no {', '.join(SUFFIXES)} files")
    names = {f: _split_names(f.relative_to(root)) for f in files}
    found = sorted(set().union(*names.values()) & (set(KNOWN_SPLITS) | _hf_splits(root)))
    if split is not None:
        chosen = [f for f in files if split in names[f]]
        if not chosen:
            raise DataError(f"input.split: no file of split {split!r} in {shown}"
                            + (f" (splits found: {', '.join(found)})" if found else ""))
        return chosen
    if len(found) > 1:
        raise DataError(f"input.path: {shown} holds the splits {', '.join(found)} (file or folder names such as "
                        f"train-00000-of-00002.parquet): set input.split to the one to read, so that no "
                        f"{found[0] if found[0] != 'train' else found[1]} rows are selected for training")
    return files


def _bad_utf8(text: str) -> tuple[BadRow, str] | None:
    """For text decoded with ``surrogateescape``: the bad row and a printable copy, if it held undecodable bytes."""
    m = _UNDECODABLE.search(text)
    if m is None:
        return None
    fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return BadRow(f"not valid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1})"), fixed


def _iter_jsonl(path: Path, text: str, lossy: bool = False) -> Iterator[tuple[int, Any, str]]:
    # Lines end at \n (and \r\n) only: U+2028, U+2029 and U+0085 are legal inside a JSON string.
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        bad = _bad_utf8(line) if lossy else None
        if bad is not None:
            yield lineno, bad[0], bad[1]
            continue
        try:
            yield lineno, json.loads(line, parse_constant=parse_constant), line
        except json.JSONDecodeError as exc:
            yield lineno, BadRow(f"invalid JSON ({exc.msg} at column {exc.colno})"), line


def _end_of_array(path: Path, text: str, i: int, name: str | None) -> None:
    """Nothing but whitespace may follow the array's closing bracket at ``i``: a second array's rows would be lost."""
    rest = _WS.match(text, i + 1).end()
    if rest < len(text):
        lineno = text.count("\n", 0, rest) + 1
        raise DataError(f"{name or display_path(path)}:{lineno}: invalid JSON: text after the end of the top-level "
                        f"array (a .json file holds one array; write one record per line as .jsonl)")


def _iter_json_array(path: Path, text: str, lossy: bool = False, name: str | None = None) -> Iterator[tuple[int, Any, str]]:
    """Yield each element of a top-level JSON array with the line it starts on."""
    decoder = json.JSONDecoder(parse_constant=parse_constant)
    i = _WS.match(text, 0).end()
    i = _WS.match(text, i + 1).end()  # past "["
    line, pos = 1, 0
    if text.startswith("]", i):
        _end_of_array(path, text, i, name)
        return
    while True:
        line += text.count("\n", pos, i)
        pos = i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            # Inside an array there is no way to resynchronise, so this always stops the run.
            raise DataError(f"{name or display_path(path)}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        bad = _bad_utf8(text[i:end]) if lossy else None
        yield (line, bad[0], bad[1]) if bad is not None else (line, obj, text[i:end])
        i = _WS.match(text, end).end()
        if text.startswith(",", i):
            i = _WS.match(text, i + 1).end()
            continue
        if text.startswith("]", i):
            _end_of_array(path, text, i, name)
            return
        lineno = text.count("\n", 0, i) + 1
        raise DataError(f"{name or display_path(path)}:{lineno}: invalid JSON: expected ',' or ']' after array element")


def _decompressed(path: Path, raw: bytes, name: str | None) -> bytes:
    """``raw`` with the file's compression (``.gz``, ``.zst``) undone; a broken stream is one error naming the file."""
    if path.name.endswith(".gz"):
        import gzip

        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{name or display_path(path)}: not a readable gzip file: {exc}") from None
    if path.name.endswith(".zst"):
        zstd = require("zstandard", package="zstandard", extra="zstd", user=f"reading {display_path(path)}")
        try:
            return zstd.ZstdDecompressor().stream_reader(raw).read()
        except zstd.ZstdError as exc:
            raise DataError(f"{name or display_path(path)}: not a readable zstd file: {exc}") from None
    return raw


def _iter_csv(text: str, delimiter: str) -> Iterator[tuple[int, Any, str]]:
    """Each CSV/TSV record as an object of its header's columns (every value a string), with the line it starts on."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, BadRow(f"invalid CSV ({exc})"), ""
            start = reader.line_num + 1
            continue
        if values:
            raw = delimiter.join(values)
            if len(values) != len(header):
                yield start, BadRow(f"{len(values)} fields where the header has {len(header)}"), raw
            else:
                yield start, dict(zip(header, values)), raw
        start = reader.line_num + 1


def _arrow_table(path: Path):
    """An Arrow IPC file: the stream format `datasets` writes, or the random-access file format."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _iter_records(path: Path, name: str | None = None) -> tuple[Iterator[tuple[int | str, Any, str]], str]:
    if path.name.endswith((".parquet", ".arrow")):
        import pyarrow.parquet as pq

        raw = path.read_bytes()
        kind = "parquet" if path.name.endswith(".parquet") else "Arrow"
        try:
            table = pq.read_table(path) if kind == "parquet" else _arrow_table(path)
        except Exception as exc:
            raise DataError(f"{name or display_path(path)}: unreadable {kind}: {exc}") from None

        def gen():
            for i, rec in enumerate(table.to_pylist(), 1):
                yield f"row {i}", rec, None

        return gen(), hashlib.sha256(raw).hexdigest()
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    data = _decompressed(path, raw, name)
    try:
        text, lossy = data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        # Keep the undecodable bytes as lone surrogates; each record holding one becomes a bad row.
        text, lossy = data.decode("utf-8-sig", "surrogateescape"), True
    plain = path.name.removesuffix(".gz").removesuffix(".zst")
    if plain.endswith((".csv", ".tsv")):
        return _iter_csv(text, "\t" if plain.endswith(".tsv") else ","), digest
    first = _WS.match(text, 0).end()
    if plain.endswith(".json") and text.startswith("[", first):
        return _iter_json_array(path, text, lossy, name), digest
    return _iter_jsonl(path, text, lossy), digest


_SCHEMA_NAMES = ("instruction", "input", "output", "n_turns", "_source", "_raw")


def _schema():
    import polars as pl

    return {"instruction": pl.String, "input": pl.String, "output": pl.String, "n_turns": pl.Int32,
            "_source": pl.String, "_raw": pl.String}


@dataclass
class FilePart:
    """One input file read on its own: its distinct rows (first occurrence, with copies counted) and bad rows."""

    path: str  # as shown to the user
    sha256: str
    rows_read: int
    frame: Any  # polars.DataFrame: id, instruction, input, output, n_turns, copies, _source, _raw
    quarantined: list[dict] = field(default_factory=list)
    error: list[str] | None = None  # the first bad row's DataError lines, when ``raise_errors`` was off


def read_file(fpath: Path, *, fmt: str = "auto", fields: Mapping[str, str] | None = None, on_bad_row: str = "error",
              limit: int | None = None, progress=None, raise_errors: bool = True, shown: str | None = None) -> FilePart:
    """Read one input file into a :class:`FilePart`; at most ``limit`` records.

    A bad row raises ``file:line: field 'x': reason`` (or, with ``raise_errors=False``, ends the
    read and is returned in ``error``, for readers running where a raise would be wrapped)
    unless ``on_bad_row`` is ``"quarantine"``. Identical rows in the file share one row.
    ``shown`` is how messages and ``_source`` name the file (default: relative to the current
    directory, which on a Ray worker is not the user's).
    """
    import polars as pl

    fpath = Path(fpath)
    name = shown if shown is not None else display_path(fpath)
    schema = _schema()
    cols: dict[str, list] = {k: [] for k in schema}
    ids: list[str] = []
    copies: list[int] = []
    chunks: list[pl.DataFrame] = []
    index: dict[str, int] = {}
    quarantined: list[dict] = []
    rows_read = 0

    def flush():
        # Rows become columnar every CHUNK_ROWS, so the Python strings of at most one chunk are alive at a time.
        if cols["_raw"]:
            chunks.append(pl.DataFrame(cols, schema=schema))
            for v in cols.values():
                v.clear()

    try:
        records, digest = _iter_records(fpath, name)
        for line, rec, text in records:
            if limit is not None and rows_read >= limit:
                break
            rows_read += 1
            source = f"{name}:{line}" if isinstance(line, int) else f"{name} {line}"
            try:
                if isinstance(rec, BadRow):
                    raise rec
                canon = canonicalize(rec, fmt, fields)
            except BadRow as bad:
                if on_bad_row != "quarantine":
                    raise DataError(f"{source}: {bad}") from None
                quarantined.append({"source": source, "reason": str(bad), "raw": text if text is not None else rec})
                continue
            pos = index.get(canon.id)
            if pos is not None:
                copies[pos] += 1
                continue
            index[canon.id] = len(ids)
            ids.append(canon.id)
            copies.append(1)
            cols["instruction"].append(canon.instruction)
            cols["input"].append(canon.input)
            cols["output"].append(canon.output)
            cols["n_turns"].append(canon.n_turns)
            cols["_source"].append(source)
            cols["_raw"].append(to_raw(rec))
            if len(cols["_raw"]) >= CHUNK_ROWS:
                flush()
            if progress is not None and rows_read % 4096 == 0:
                progress(4096)
    except DataError as exc:
        if raise_errors:
            raise
        return FilePart(name, "", rows_read, None, quarantined, list(exc.lines))
    if progress is not None:
        progress(rows_read % 4096)
    flush()
    del index
    rest = (pl.concat(chunks, rechunk=False) if len(chunks) > 1 else chunks[0] if chunks
            else pl.DataFrame({k: [] for k in schema}, schema=schema))
    frame = rest.select(pl.Series("id", ids, dtype=pl.String), *_SCHEMA_NAMES[:4],
                        pl.Series("copies", copies, dtype=pl.Int32), *_SCHEMA_NAMES[4:])
    return FilePart(name, digest, rows_read, frame, quarantined)


def merge_parts(parts: list[FilePart], path: Path) -> ReadResult:
    """The :class:`ReadResult` of reading ``parts``' files one after another, in their order.

    A row met in several files is kept where it first appears (its ``_source``) with the copies
    of every file added up, exactly as one sequential read counts them. The first file (in
    order) that stopped on a bad row raises its error.
    """
    import polars as pl

    for part in parts:
        if part.error is not None:
            raise DataError(*part.error)
    result = ReadResult(frame=None)
    result.rows_read = sum(p.rows_read for p in parts)
    result.quarantined = [q for p in parts for q in p.quarantined]
    result.files = [{"path": p.path, "sha256": p.sha256, "rows": p.rows_read} for p in parts]
    if result.rows_read == 0:
        raise DataError(f"input.path: {display_path(Path(path))} has no rows")
    frames = [p.frame for p in parts if p.frame is not None and p.frame.height]
    if not frames:
        raise DataError(
            f"input.path: none of the {result.rows_read} rows in {display_path(Path(path))} is valid "
            f"(all quarantined; first: {result.quarantined[0]['source']}: {result.quarantined[0]['reason']})"
        )
    if len(frames) == 1:
        frame = frames[0]
    else:
        both = pl.concat(frames, rechunk=False)
        if both["id"].n_unique() == both.height:
            frame = both
        else:  # a row in several files: the first file's copy stays, copies add up
            cols = [c for c in both.columns if c not in ("id", "copies")]
            frame = (both.group_by("id", maintain_order=True)
                     .agg(*[pl.col(c).first() for c in cols], pl.col("copies").sum().cast(pl.Int32))
                     .select(both.columns))
    valid = result.rows_read - len(result.quarantined)
    result.duplicates = valid - frame.height
    result.frame = frame
    return result


def read_input(
    path: Path,
    *,
    fmt: str = "auto",
    fields: Mapping[str, str] | None = None,
    on_bad_row: str = "error",
    limit: int | None = None,
    progress=None,
    split: str | None = None,
):
    """Read ``path`` (a file, a folder of shards or a glob; files in name order, only ``split``'s when it is set)
    into a :class:`ReadResult`.

    A bad row stops the read with ``file:line: field 'x': reason`` unless ``on_bad_row`` is
    ``"quarantine"``, in which case it is kept (with its reason) for ``quarantine.jsonl``.
    Identical rows share one id: they are kept once and counted in ``copies``.
    """
    parts: list[FilePart] = []
    left = limit
    for fpath in input_files(Path(path), split):
        if left is not None and left <= 0:
            break
        part = read_file(fpath, fmt=fmt, fields=fields, on_bad_row=on_bad_row, limit=left, progress=progress)
        parts.append(part)
        if left is not None:
            left -= part.rows_read
    return merge_parts(parts, path)


def derive_column(name: str, raws, *, fmt: str = "auto", fields: Mapping[str, str] | None = None):
    """The derived column ``name`` (see :data:`dqf.DERIVED_COLUMNS`) of rows whose ``_raw`` records are ``raws``.

    ``turns``: each row's conversation as a list of ``{role, content}`` (:func:`dqf.rows.conversation`),
    parsed again from the record with the recipe's ``input.format`` and ``input.fields``. Null where a row
    has no record (a frame a plugin built itself).
    """
    import polars as pl

    if name != "turns":
        raise ValueError(f"unknown derived column {name!r}")
    dtype = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    values = [None if raw is None else
              [{"role": r, "content": c} for r, c in conversation(json.loads(raw), fmt, fields)]
              for raw in raws]
    return pl.Series(name, values, dtype=dtype)
