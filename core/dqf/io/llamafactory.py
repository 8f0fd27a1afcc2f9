"""LLaMA-Factory's dataset registry (`data/dataset_info.json`): one entry read as dqf's input path, format and fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dqf.errors import DataError

#: LLaMA-Factory's `columns` keys and the dqf fields they name, per `formatting`.
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
_SHAREGPT_COLUMNS = {"messages": "conversations"}
#: Columns dqf reads under their own names only (they cannot be renamed yet).
_FIXED = {"system": "system", "history": "history"}
#: Role/text key pairs a `conversations` list may use (dqf detects which per record).
_TURN_KEYS = {("from", "value"), ("role", "content")}


@dataclass
class DatasetEntry:
    path: Path
    format: str
    fields: dict[str, str] = field(default_factory=dict)


def read_entry(info_path: Path, name: str, key: str = "input.dataset_info") -> DatasetEntry:
    """The entry ``name`` of the registry at ``info_path``; its ``file_name`` is relative to the registry's folder,
    as LLaMA-Factory reads it. Anything dqf cannot read as LLaMA-Factory would is one error naming the key."""
    try:
        registry = json.loads(info_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{key}: cannot read {info_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"{key}: {info_path} is not valid JSON ({exc})") from None
    if not isinstance(registry, dict):
        raise DataError(f"{key}: {info_path} holds no object of dataset entries")
    entry = registry.get(name)
    if not isinstance(entry, dict):
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"input.name: no dataset {name!r} in {info_path} (it has {len(registry)}: "
                        f"{', '.join(sorted(registry)[:12])}{', ...' if len(registry) > 12 else ''}){hint}")
    where = f"{key}: {name}"
    remote = [k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name") if k in entry]
    if remote:
        raise DataError(f"{where}: names a remote dataset ({remote[0]}); dqf reads local files only: download it and "
                        f"point input.path at the files")
    if not isinstance(entry.get("file_name"), str):
        raise DataError(f"{where}: has no file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{where}: formatting {formatting!r} is not one dqf reads (alpaca, sharegpt)")
    columns = entry.get("columns") or {}
    mapping = _ALPACA_COLUMNS if formatting == "alpaca" else _SHAREGPT_COLUMNS
    fields = {}
    for column, value in columns.items():
        if column in mapping:
            if value != mapping[column]:
                fields[mapping[column]] = value
        elif column in _FIXED and value != _FIXED[column]:
            raise DataError(f"{where}: columns.{column} = {value!r}: dqf reads {column} from a field named "
                            f"{_FIXED[column]!r} only; rename the field in the data")
        elif column not in _FIXED and column not in ("tools", "images", "videos", "audios"):
            raise DataError(f"{where}: columns.{column} is not a column of the {formatting} formatting")
    tags = entry.get("tags") or {}
    turn_keys = (tags.get("role_tag", "from"), tags.get("content_tag", "value"))
    if formatting == "sharegpt" and turn_keys not in _TURN_KEYS:
        raise DataError(f"{where}: tags role_tag/content_tag = {turn_keys[0]!r}/{turn_keys[1]!r}: dqf reads "
                        f"turns keyed from/value or role/content")
    return DatasetEntry(info_path.parent / entry["file_name"], "sharegpt" if formatting == "sharegpt" else "alpaca",
                        fields)
