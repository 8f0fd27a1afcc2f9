"""Beside every selection: the LLaMA-Factory registry entry, the axolotl entry and the `datasets` call that load it
as it is, checked by loading the files with Hugging Face `datasets` and with dqf's own registry reader."""

from __future__ import annotations

import json

import pytest

import dqf

ROWS = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
                           {"from": "gpt", "value": "Bye!"}]},
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}]}]


def run(tmp_path, fmt):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "mix.toml").write_text(f'[input]\npath = "p.jsonl"\n[output]\ndir = "out"\nformat = "{fmt}"\n'
                                       '[[steps]]\nid = "all"\nselect = { plugin = "random", fraction = 1.0 }\n',
                                       encoding="utf-8")
    return dqf.run(tmp_path / "mix.toml")


@pytest.mark.parametrize("fmt", ["sharegpt", "messages"])
def test_chat_outputs_load_with_datasets_and_as_the_llamafactory_entry_says(tmp_path, fmt):
    datasets = pytest.importorskip("datasets")
    res = run(tmp_path, fmt)
    load = res.manifest["output"]["load"]
    assert load["llamafactory"]["dataset"] == "mix"
    out = tmp_path / "out"
    registry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    field = "conversations" if fmt == "sharegpt" else "messages"
    assert registry["mix"]["formatting"] == "sharegpt" and registry["mix"]["columns"]["messages"] == field
    # the datasets call written in the manifest loads every row, with every turn
    ds = eval(load["datasets"], {"load_dataset": datasets.load_dataset})  # noqa: S307 - the manifest's own call
    assert ds.num_rows == 3
    roles = sorted([t["from" if fmt == "sharegpt" else "role"] for t in turns] for turns in ds[field])
    if fmt == "messages":
        assert roles == [["system", "user", "assistant", "user", "assistant"], ["user", "assistant"],
                         ["user", "assistant"]]
    else:
        assert roles == [["human", "gpt"], ["human", "gpt"], ["system", "human", "gpt", "human", "gpt"]]
    # the registry entry, read as LLaMA-Factory reads it, gives back the same rows
    (tmp_path / "again.toml").write_text(f'[input]\ndataset_info = "out/dataset_info.json"\nname = "mix"\n'
                                         '[output]\ndir = "again"\n[[steps]]\nid = "all"\n'
                                         'select = { plugin = "random", fraction = 1.0 }\n', encoding="utf-8")
    again = dqf.run(tmp_path / "again.toml")
    assert sorted(again.selected["output"].to_list()) == sorted(res.selected["output"].to_list())
    yaml = (out / "axolotl.yaml").read_text(encoding="utf-8")
    assert "type: chat_template" in yaml and f"field_messages: {field}" in yaml and str(out.resolve()) in yaml


def test_an_alpaca_output_gets_alpaca_loaders(tmp_path):
    run(tmp_path, "jsonl")
    out = tmp_path / "out"
    entry = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))["mix"]
    assert entry == {"file_name": "selected.jsonl", "columns": {"prompt": "instruction", "query": "input",
                                                                 "response": "output", "system": "system",
                                                                 "history": "history"}}
    assert "type: alpaca" in (out / "axolotl.yaml").read_text(encoding="utf-8")
