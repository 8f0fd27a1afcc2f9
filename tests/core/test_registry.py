"""Plugin discovery through real entry points, lookup by name, and the errors for every way a plugin can be wrong."""

from __future__ import annotations

import sys
import textwrap
import types

import polars as pl
import pytest
from pydantic import BaseModel

import dqf
import dqf.registry
from dqf import PluginError, PluginOptions, RecipeError, Scorer, Selector


# -- helpers ---------------------------------------------------------------------------------

@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a real (on-disk) distribution: a package plus a .dist-info with `dqf` entry points."""
    created: list[str] = []

    def _make(dist: str, package: str, entry_points: dict[str, str], source: str, version: str = "1.0"):
        root = tmp_path / "site"
        pkg = root / package
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        eps = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[dqf]\n{eps}", encoding="utf-8")
        if str(root) not in sys.path:
            monkeypatch.syspath_prepend(str(root))
        created.append(package)
        return root

    yield _make
    for name in created:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def _scorer_module(name: str, *classes, hook_name: str = "dqf_register_scorers") -> types.ModuleType:
    def register_all(register):
        for cls in classes:
            register(cls)

    register_all.__name__ = hook_name
    return _module(name, **{hook_name: dqf.hookimpl(register_all)})


class LenOptions(PluginOptions):
    pass


class FakeHeuristic(Scorer):
    name = "heuristic"
    Options = LenOptions

    def columns(self):
        return {"fake_len": pl.Int64}


# -- built-in discovery ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, kind, module",
    [
        ("threshold", "selector", "dqf_plugins.threshold"),
        ("top-k", "selector", "dqf_plugins.top_k"),
        ("random", "selector", "dqf_plugins.random"),
        ("heuristic", "scorer", "dqf_contrib.heuristic.heuristic"),
    ],
)
def test_builtin_plugins_found_through_entry_points(name, kind, module):
    host = dqf.registry.build_plugin_manager()
    info = host.get(kind, name)
    assert info.name == name
    assert info.kind == kind
    assert info.cls.__module__ == module
    assert info.provider.distribution == "dqf"
    assert info.provider.version == dqf.__version__
    # The provider records the entry point's module: the built-ins arrive like any third-party package.
    assert info.provider.module == ("dqf_contrib.heuristic" if kind == "scorer" else "dqf_plugins")
    assert issubclass(info.cls, dqf.Scorer if kind == "scorer" else dqf.Selector)


def test_names_by_kind():
    host = dqf.registry.build_plugin_manager()
    assert set(host.names("selector")) >= {"threshold", "top-k", "random"}
    assert "heuristic" in host.names("scorer")
    assert "heuristic" not in host.names("selector")
    assert set(host.names()) >= {"threshold", "top-k", "random", "heuristic"}


def test_entry_points_can_be_turned_off():
    host = dqf.registry.build_plugin_manager(entry_points=False)
    assert host.names() == []


def test_each_build_is_a_fresh_host():
    class Other(Scorer):
        name = "other-scorer"
        Options = LenOptions

    a = dqf.registry.build_plugin_manager()
    b = dqf.registry.build_plugin_manager(extra_plugins=[("mine", _scorer_module("mine", Other))])
    assert "other-scorer" in b.names("scorer")
    assert "other-scorer" not in a.names("scorer")
    assert a.pm is not b.pm


# -- lookup errors -----------------------------------------------------------------------------

def test_unknown_name_lists_available_and_closest_match():
    host = dqf.registry.build_plugin_manager()
    with pytest.raises(PluginError) as info:
        host.get("scorer", "heurstic")
    msg = str(info.value)
    assert "unknown scorer 'heurstic'" in msg
    assert "did you mean 'heuristic'?" in msg
    assert "heuristic" in listed(msg, "scorers")


def test_unknown_selector_lists_all_selectors():
    host = dqf.registry.build_plugin_manager()
    with pytest.raises(PluginError) as info:
        host.get("selector", "topk")
    msg = str(info.value)
    assert "did you mean 'top-k'?" in msg
    listed = msg.split("available selectors: ", 1)[1]
    assert set(listed.split(", ")) == set(host.names("selector"))


def test_unknown_name_without_close_match_has_no_suggestion():
    host = dqf.registry.build_plugin_manager()
    with pytest.raises(PluginError) as info:
        host.get("scorer", "zzzzzzzz")
    assert "did you mean" not in str(info.value)
    assert "heuristic" in listed(str(info.value), "scorers")


def test_wrong_kind():
    host = dqf.registry.build_plugin_manager()
    with pytest.raises(PluginError) as info:
        host.get("scorer", "top-k")
    msg = str(info.value)
    assert "'top-k' is a selector, not a scorer" in msg
    assert "heuristic" in listed(msg, "scorers")


def test_no_plugins_of_a_kind_message():
    host = dqf.registry.build_plugin_manager(entry_points=False)
    assert host.names("probe") == []
    with pytest.raises(PluginError, match="available probes: none"):
        host.get("probe", "mods")


# -- duplicates --------------------------------------------------------------------------------

def test_same_plugin_name_from_two_providers():
    other = _scorer_module("other_scorers", FakeHeuristic)
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager(extra_plugins=[("other", other)])
    msg = str(info.value)
    assert "two plugins are named 'heuristic'" in msg
    assert "HeuristicScorer from dqf 0.1.0 (dqf_contrib.heuristic)" in msg
    assert "FakeHeuristic from other" in msg


def test_same_name_across_kinds_is_a_duplicate():
    class TopKScorer(Scorer):
        name = "top-k"
        Options = LenOptions

    with pytest.raises(PluginError, match="two plugins are named 'top-k'"):
        dqf.registry.build_plugin_manager(extra_plugins=[("x", _scorer_module("x", TopKScorer))])


def test_registering_the_same_class_twice_is_not_a_conflict():
    mod = _scorer_module("twice", FakeHeuristic, FakeHeuristic)
    host = dqf.registry.build_plugin_manager(entry_points=False, extra_plugins=[("twice", mod)])
    assert host.names("scorer") == ["heuristic"]


def test_two_distributions_with_same_entry_point_name(fake_dist):
    fake_dist(
        "fakepkg",
        "fakepkg_dup",
        {"heuristic": "fakepkg_dup"},
        "raise RuntimeError('a conflicting plugin must not even be imported')\n",
    )
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager()
    msg = str(info.value)
    assert "two installed distributions provide the dqf entry point 'heuristic'" in msg
    assert "dqf (dqf_contrib.heuristic)" in msg
    assert "fakepkg (fakepkg_dup)" in msg
    assert "fakepkg_dup" not in sys.modules


def test_duplicate_entry_point_fails_recipe_validation(fake_dist, write_recipe):
    fake_dist("fakepkg", "fakepkg_dup2", {"heuristic": "fakepkg_dup2"}, "")
    path = write_recipe(
        """
        name = "t"
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "q"
        score = { plugin = "heuristic" }
        """
    )
    with pytest.raises(RecipeError) as info:
        dqf.load_recipe(path)
    line = info.value.lines[0]
    assert line.startswith(f"{path}: plugins: two installed distributions provide the dqf entry point 'heuristic'")


def test_third_party_distribution_is_discovered(fake_dist):
    fake_dist(
        "acme-dqf-scorers",
        "acme_scorers",
        {"acme": "acme_scorers"},
        """
        import dqf


        class AcmeOptions(dqf.PluginOptions):
            factor: int = 2


        class AcmeScorer(dqf.Scorer):
            '''Count characters of the output, times a factor.'''
            name = "acme-len"
            version = "3"
            Options = AcmeOptions

            def columns(self):
                import polars as pl
                return {"acme_len": pl.Int64}


        @dqf.hookimpl
        def dqf_register_scorers(register):
            register(AcmeScorer)
        """,
        version="2.5",
    )
    host = dqf.registry.build_plugin_manager()
    info = host.get("scorer", "acme-len")
    assert info.cls.__name__ == "AcmeScorer"
    assert info.provider.distribution == "acme-dqf-scorers"
    assert info.provider.version == "2.5"
    assert info.provider.module == "acme_scorers"
    # Installing a third-party package does not hide the built-ins.
    assert host.get("scorer", "heuristic").provider.distribution == "dqf"
    assert host.get("selector", "top-k").provider.distribution == "dqf"

    from dqf.registry import describe_plugins

    row = next(d for d in describe_plugins(host) if d["name"] == "acme-len")
    assert row["distribution"] == "acme-dqf-scorers"
    assert row["distribution_version"] == "2.5"
    assert row["version"] == "3"
    assert row["kind"] == "scorer"
    assert row["summary"] == "Count characters of the output, times a factor."
    assert "factor" in row["options_schema"]["properties"]


def test_broken_third_party_distribution_names_itself(fake_dist):
    fake_dist("broken-dist", "broken_plugin", {"broken": "broken_plugin"}, "import not_a_real_module_xyz\n")
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager()
    msg = str(info.value)
    assert "plugin 'broken' from broken-dist failed to import (broken_plugin)" in msg
    assert "not_a_real_module_xyz" in msg


# -- invalid plugins ---------------------------------------------------------------------------

def test_misspelled_hook_name_fails_loudly():
    class Good(Scorer):
        name = "good"
        Options = LenOptions

    mod = _scorer_module("typo_mod", Good, hook_name="dqf_register_scorer")
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager(extra_plugins=[("typo", mod)])
    msg = str(info.value)
    assert "matches no dqf hook" in msg
    assert "dqf_register_scorer" in msg


def test_registering_a_non_scorer_is_an_error():
    class NotAScorer:
        name = "plain"
        Options = LenOptions

    with pytest.raises(PluginError, match=r"registered .*NotAScorer.* as a scorer, but it is not a dqf.Scorer subclass"):
        dqf.registry.build_plugin_manager(extra_plugins=[("bad", _scorer_module("bad", NotAScorer))])


def test_registering_a_selector_as_a_scorer_is_an_error():
    class Sel(Selector):
        name = "sel"
        Options = LenOptions

    with pytest.raises(PluginError, match="not a dqf.Scorer subclass"):
        dqf.registry.build_plugin_manager(extra_plugins=[("bad", _scorer_module("bad", Sel))])


def test_registering_an_instance_is_an_error():
    with pytest.raises(PluginError, match="not a dqf.Scorer subclass"):
        dqf.registry.build_plugin_manager(extra_plugins=[("bad", _scorer_module("bad", FakeHeuristic()))])


def test_options_without_extra_forbid_is_an_error():
    class LooseOptions(BaseModel):
        x: int = 1

    class Loose(Scorer):
        name = "loose"
        Options = LooseOptions

    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager(extra_plugins=[("loose", _scorer_module("loose", Loose))])
    assert "Loose.Options must be a pydantic model with extra='forbid'" in str(info.value)


def test_options_not_a_model_is_an_error():
    class NoModel(Scorer):
        name = "nomodel"
        Options = dict

    with pytest.raises(PluginError, match="extra='forbid'"):
        dqf.registry.build_plugin_manager(extra_plugins=[("nm", _scorer_module("nm", NoModel))])


def test_plugin_without_name_is_an_error():
    class Nameless(Scorer):
        Options = LenOptions

    with pytest.raises(PluginError, match="Nameless has no `name`"):
        dqf.registry.build_plugin_manager(extra_plugins=[("nl", _scorer_module("nl", Nameless))])


# -- local plugin modules ----------------------------------------------------------------------

LOCAL_SCORERS = '''
"""A local scorer module, as a user would write it next to their recipe."""
import dqf


class WordCountOptions(dqf.PluginOptions):
    plus: int = 0


class WordCount(dqf.Scorer):
    name = "word-count"
    Options = WordCountOptions

    def columns(self):
        import polars as pl
        return {"wc": pl.Int64}

    def score(self, batch):
        import polars as pl
        return batch.select(
            (pl.col("output").str.count_matches(r"\\S+").cast(pl.Int64) + self.options.plus).alias("wc")
        )


@dqf.hookimpl
def dqf_register_scorers(register):
    register(WordCount)
'''


def test_local_module_loads_by_path(tmp_path):
    path = tmp_path / "my_scorers.py"
    path.write_text(LOCAL_SCORERS, encoding="utf-8")
    host = dqf.registry.build_plugin_manager([path])
    info = host.get("scorer", "word-count")
    assert info.cls.__name__ == "WordCount"
    assert info.provider.distribution == f"local file {path}"
    assert str(info.provider) == f"local file {path}"
    # Installed plugins are still there.
    assert "heuristic" in host.names("scorer")
    # Loading the same file again (a second host) reuses the module rather than failing as a duplicate.
    again = dqf.registry.build_plugin_manager([str(path)])
    assert again.get("scorer", "word-count").cls is info.cls


def test_local_module_missing(tmp_path):
    with pytest.raises(PluginError, match="local plugin module not found"):
        dqf.registry.build_plugin_manager([tmp_path / "nope.py"])


def test_local_module_import_error_is_reported(tmp_path):
    path = tmp_path / "bad_scorers.py"
    path.write_text("1 / 0\n", encoding="utf-8")
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager([path])
    assert f"local plugin module {path} failed to import: ZeroDivisionError" in str(info.value)


def test_local_module_with_misspelled_hook(tmp_path):
    path = tmp_path / "typo_scorers.py"
    path.write_text(LOCAL_SCORERS.replace("def dqf_register_scorers", "def dqf_register_scorer"), encoding="utf-8")
    with pytest.raises(PluginError, match="matches no dqf hook"):
        dqf.registry.build_plugin_manager([path])


def test_local_module_name_clash_with_installed_plugin(tmp_path):
    path = tmp_path / "clash.py"
    path.write_text(LOCAL_SCORERS.replace('name = "word-count"', 'name = "top-k"'), encoding="utf-8")
    with pytest.raises(PluginError) as info:
        dqf.registry.build_plugin_manager([path])
    msg = str(info.value)
    assert "two plugins are named 'top-k'" in msg
    assert f"local file {path}" in msg
    assert "dqf 0.1.0 (dqf_plugins)" in msg


LOCAL_RECIPE = """
name = "local"
seed = 1
plugins = ["./my_scorers.py"]

[input]
path = "pool.jsonl"
format = "alpaca"

[output]
dir = "out"

[[steps]]
id = "count"
score = { plugin = "word-count", plus = 100 }

[[steps]]
id = "top"
select = { plugin = "top-k", column = "wc", k = 5 }
"""


def test_recipe_plugins_list_loads_local_module(tmp_path, write_recipe):
    (tmp_path / "my_scorers.py").write_text(LOCAL_SCORERS, encoding="utf-8")
    recipe, host = dqf.load_recipe(write_recipe(LOCAL_RECIPE))
    assert host.get("scorer", "word-count").provider.distribution.startswith("local file")
    count = recipe.step("count")
    assert count.plugin.name == "word-count"
    assert count.plugin.options.plus == 100
    assert count.columns == {"wc": pl.Int64}


def test_recipe_plugin_option_typo_for_local_plugin(tmp_path, write_recipe):
    (tmp_path / "my_scorers.py").write_text(LOCAL_SCORERS, encoding="utf-8")
    path = write_recipe(LOCAL_RECIPE.replace("plus = 100", "pluss = 100"))
    with pytest.raises(RecipeError) as info:
        dqf.load_recipe(path)
    assert f"{path}: steps[0].score.pluss: unknown key" in info.value.lines


def test_recipe_with_local_plugin_runs_end_to_end(tmp_path, write_recipe, write_jsonl, alpaca_rows):
    (tmp_path / "my_scorers.py").write_text(LOCAL_SCORERS, encoding="utf-8")
    write_jsonl(alpaca_rows)
    result = dqf.run(write_recipe(LOCAL_RECIPE))
    assert result.run_dir == tmp_path / "out"
    rows = pl.read_parquet(tmp_path / "out" / "rows.parquet")
    assert rows.height == len(alpaca_rows)
    assert "wc" in rows.columns
    expected = [len(r["output"].split()) + 100 for r in alpaca_rows]
    assert sorted(rows["wc"].to_list()) == sorted(expected)
    assert result.selected.height == 5
    assert sorted(result.selected["wc"].to_list()) == sorted(expected)[-5:]


def listed(message: str, kinds: str) -> list[str]:
    """The plugin names an error message lists after 'available <kinds>: '."""
    return message.split(f"available {kinds}: ", 1)[1].split(", ")
