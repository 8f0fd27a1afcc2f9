"""input.dataset_info: a LLaMA-Factory registry entry read as LLaMA-Factory reads it (file_name, formatting, columns,
tags), and one error for what dqf cannot read."""

from __future__ import annotations

import json

import pytest

import dqf
from dqf import RecipeError

REGISTRY = {
    "alpaca_en": {"file_name": "alpaca_en.json", "columns": {"prompt": "q", "query": "ctx", "response": "a"}},
    "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    "hub": {"hf_hub_url": "tatsu-lab/alpaca"},
    "renamed_history": {"file_name": "alpaca_en.json", "columns": {"prompt": "q", "response": "a", "history": "h"}},
    "odd_tags": {"file_name": "chat.jsonl", "formatting": "sharegpt", "tags": {"role_tag": "speaker"}},
}
RECIPE = '''[input]
dataset_info = "data/dataset_info.json"
name = "{name}"
{extra}
[output]
dir = "out"
[[steps]]
id = "all"
select = {{ plugin = "random", fraction = 1.0 }}
'''


@pytest.fixture
def registry(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(REGISTRY), encoding="utf-8")
    (tmp_path / "data" / "alpaca_en.json").write_text(json.dumps([
        {"q": "Name a colour.", "ctx": "", "a": "Blue"},
        {"q": "And in French?", "a": "Bleu", "history": [["Name a colour.", "Blue"]]}]), encoding="utf-8")
    (tmp_path / "data" / "chat.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}) + "\n",
        encoding="utf-8")
    return tmp_path


def recipe(tmp_path, name, extra=""):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(name=name, extra=extra), encoding="utf-8")
    return path


def test_an_alpaca_entry_applies_its_file_and_columns(registry):
    res = dqf.run(recipe(registry, "alpaca_en"))
    assert res.selected["instruction"].to_list() == ["Name a colour.", "And in French?"]
    assert res.selected["output"].to_list() == ["Blue", "Bleu"] and res.selected["n_turns"].to_list() == [1, 2]


def test_a_sharegpt_entry_with_openai_tags_reads_its_messages(registry):
    res = dqf.run(recipe(registry, "chat"))
    assert res.selected["instruction"].to_list() == ["Hi"] and res.selected["output"].to_list() == ["Hello"]


@pytest.mark.parametrize("name,extra,message", [
    ("hub", "", "input.dataset_info: hub: names a remote dataset (hf_hub_url); dqf reads local files only"),
    ("alpaca", "", "input.name: no dataset 'alpaca' in "),
    ("renamed_history", "", "input.dataset_info: renamed_history: columns.history = 'h': dqf reads history from a "
                            "field named 'history' only"),
    ("odd_tags", "", "input.dataset_info: odd_tags: tags role_tag/content_tag = 'speaker'/'value': dqf reads turns "
                     "keyed from/value or role/content"),
    ("alpaca_en", 'format = "alpaca"', "input.format: set by the dataset_info entry; leave it out"),
    ("alpaca_en", 'path = "x.jsonl"', "input.path: give input.path or input.dataset_info, not both"),
])
def test_what_dqf_cannot_read_is_one_error_at_validation(registry, name, extra, message):
    with pytest.raises(RecipeError) as info:
        dqf.validate(recipe(registry, name, extra))
    assert message in str(info.value)
    if name == "alpaca":
        assert str(info.value).endswith("(it has 5: alpaca_en, chat, hub, odd_tags, renamed_history); "
                                        "did you mean 'alpaca_en'?")


def test_input_needs_a_path_or_a_registry(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[input]\nformat = "alpaca"\n[output]\ndir = "out"\n[[steps]]\nid = "all"\n'
                    'select = { plugin = "random", fraction = 1.0 }\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"input\.path: required key is missing \(or give input\.dataset_info and "
                                          r"input\.name\)"):
        dqf.validate(path)
