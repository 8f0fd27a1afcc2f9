"""What each trainer needs to load a run's selection as it is: a LLaMA-Factory registry entry, an axolotl datasets
entry and the Hugging Face `datasets` call, written beside `selected.<ext>`."""

from __future__ import annotations

import json
from pathlib import Path

#: The registry file LLaMA-Factory reads from its `dataset_dir`.
LLAMAFACTORY_FILE = "dataset_info.json"
AXOLOTL_FILE = "axolotl.yaml"
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                   "history": "history"}
_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                "system_tag": "system", "observation_tag": "tool"}


def llamafactory_entry(selected: Path, fmt: str) -> dict:
    """The registry entry for ``selected`` (written as ``fmt``): alpaca columns, or sharegpt with its tags."""
    entry: dict = {"file_name": selected.name}
    if fmt == "sharegpt":
        entry.update(formatting="sharegpt", columns={"messages": "conversations", "system": "system"})
    elif fmt == "messages":
        entry.update(formatting="sharegpt", columns={"messages": "messages"}, tags=dict(_OPENAI_TAGS))
    else:
        entry["columns"] = dict(_ALPACA_COLUMNS)
    return entry


def axolotl_yaml(selected: Path, fmt: str) -> str:
    """An axolotl ``datasets:`` entry for ``selected``: ``alpaca``, or ``chat_template`` with the message keys."""
    ds_type = "parquet" if selected.suffix == ".parquet" else "json"
    lines = ["datasets:", f"  - path: {json.dumps(str(selected.resolve()))}", f"    ds_type: {ds_type}"]
    if fmt in ("sharegpt", "messages"):
        field, role, content = ("conversations", "from", "value") if fmt == "sharegpt" else ("messages", "role",
                                                                                             "content")
        lines += ["    type: chat_template", f"    field_messages: {field}", "    message_property_mappings:",
                  f"      role: {role}", f"      content: {content}"]
        if fmt == "sharegpt":
            lines += ["    roles:", "      user: [human]", "      assistant: [gpt]", "      system: [system]",
                      "      tool: [observation]"]
    else:
        lines.append("    type: alpaca")
    return "\n".join(lines) + "\n"


def datasets_call(selected: Path) -> str:
    """The one-line Hugging Face ``datasets`` call that loads ``selected`` (what TRL's ``SFTTrainer`` takes)."""
    kind = "parquet" if selected.suffix == ".parquet" else "json"
    return f'load_dataset("{kind}", data_files={json.dumps(str(selected.resolve()))}, split="train")'


def write_loaders(selected: Path, fmt: str, name: str, path_of) -> dict:
    """Write the LLaMA-Factory registry (entry ``name``) and the axolotl entry beside ``selected``; ``path_of`` maps a
    final path to the path to write (an atomic group's). Returns the manifest's ``output.load`` notes."""
    run_dir = selected.parent
    with open(path_of(run_dir / LLAMAFACTORY_FILE), "w", encoding="utf-8") as fh:
        json.dump({name: llamafactory_entry(selected, fmt)}, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    with open(path_of(run_dir / AXOLOTL_FILE), "w", encoding="utf-8") as fh:
        fh.write(axolotl_yaml(selected, fmt))
    return {"llamafactory": {"dataset_dir": str(run_dir.resolve()), "dataset": name},
            "axolotl": AXOLOTL_FILE, "datasets": datasets_call(selected)}
