"""Careless recipes and local modules: a BOM, a missing name, a non-Python plugin file, a plugin calling sys.exit()."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dqf
from dqf import RecipeError

BODY = '''
[input]
path = "pool.jsonl"
[output]
dir = "out"
[[steps]]
id = "all"
select = { plugin = "random", fraction = 1.0 }
'''


def test_a_recipe_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ('name = "bom"\n' + BODY).encode())
    assert dqf.validate(path).name == "bom"


def test_name_defaults_to_the_recipe_files_stem(tmp_path):
    path = tmp_path / "first-try.toml"
    path.write_text(BODY, encoding="utf-8")
    assert dqf.validate(path).name == "first-try"


@pytest.mark.parametrize("module,source,message", [
    ("x.txt", "print('hi')\n", "plugins: local plugin module {p} is not a Python file (.py)"),
    ("exits.py", "import sys\nsys.exit(3)\n", "plugins: local plugin module {p} failed to import: called sys.exit(3)"),
])
def test_bad_local_modules_are_one_clear_error(tmp_path, module, source, message):
    (tmp_path / module).write_text(source, encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(f'plugins = ["{module}"]\n' + BODY, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        dqf.validate(path)
    assert str(info.value) == f"{path}: " + message.format(p=(tmp_path / module).resolve())
    proc = subprocess.run([sys.executable, "-c", "from dqf.cli import main; main()", "validate", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("dqf: error: ") and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("shape", ["file", "under-a-file"])
def test_an_unusable_cache_dir_fails_before_the_input_is_read(tmp_path, shape):
    (tmp_path / "afile").write_text("not a folder")
    cache = tmp_path / "afile" if shape == "file" else tmp_path / "afile" / "cache"
    path = tmp_path / "r.toml"
    path.write_text(f'name = "c"\n[cache]\ndir = "{cache}"\n' + BODY, encoding="utf-8")
    with pytest.raises(dqf.DqfError) as info:  # pool.jsonl does not exist: the cache is checked first
        dqf.run(path)
    expected = "is a file, not a folder" if shape == "file" else "cannot write to"
    assert str(info.value).startswith("cache.dir: ") and expected in str(info.value)


@pytest.mark.parametrize("step_id", ["q\\n", "q r", "1q", ""])
def test_step_ids_are_identifiers(tmp_path, step_id):
    path = tmp_path / "r.toml"
    path.write_text(BODY.replace('id = "all"', f'id = "{step_id}"'), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"steps\[0\]\.id: .* is not a valid step id \(letters, digits, '_' and '-'\)"):
        dqf.validate(path)


def test_a_long_chain_in_reverse_file_order_validates_without_recursion(tmp_path):
    n = 1_100
    steps = "".join(f'[[steps]]\nid = "s{i}"\nfrom = "{f"s{i + 1}" if i + 1 < n else "input"}"\n'
                    f'select = {{ plugin = "random", fraction = 1.0 }}\n' for i in range(n))
    path = tmp_path / "long.toml"
    path.write_text('[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\nselect = "s0"\n' + steps, encoding="utf-8")
    recipe = dqf.validate(path)
    assert [s.id for s in recipe.steps][:2] == [f"s{n - 1}", f"s{n - 2}"] and recipe.steps[-1].id == "s0"


def test_a_cycle_is_named_in_order(tmp_path):
    steps = "".join(f'[[steps]]\nid = "{a}"\nfrom = "{b}"\nselect = {{ plugin = "random", fraction = 1.0 }}\n'
                    for a, b in [("a", "b"), ("b", "c"), ("c", "a")])
    path = tmp_path / "cyc.toml"
    path.write_text('[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n' + steps, encoding="utf-8")
    with pytest.raises(RecipeError, match=r"steps\[0\]\.from: steps form a cycle: a -> b -> c -> a"):
        dqf.validate(path)


SHARDS = '''name = "s"
[input]
path = "shards"
[output]
dir = "{out}"
[cache]
dir = "{cache}"
[[steps]]
id = "all"
select = {{ plugin = "random", fraction = 1.0 }}
'''


def _shards(tmp_path):
    (tmp_path / "shards").mkdir()
    for i in range(2):
        (tmp_path / "shards" / f"{i}.jsonl").write_text(
            "".join(f'{{"instruction": "q{i}{j}", "input": "", "output": "a"}}\n' for j in range(3)), encoding="utf-8")


@pytest.mark.parametrize("out, cache, key, folder", [("shards/out", "c", "output.dir", "shards/out"),
                                                     ("out", "shards/.cache", "cache.dir", "shards/.cache"),
                                                     ("shards", "c", "output.dir", "shards")])
def test_an_output_or_cache_dir_inside_a_folder_input_is_refused(tmp_path, monkeypatch, out, cache, key, folder):
    _shards(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.toml"
    path.write_text(SHARDS.format(out=out, cache=cache), encoding="utf-8")
    message = (f"{key}: {folder} is inside the input folder shards, which is read recursively: the next run would "
               f"read this run's files back as input rows; put {key} outside it")
    with pytest.raises(RecipeError) as info:
        dqf.validate(path)
    assert str(info.value) == f"{path}: {message}"
    assert not (tmp_path / out / "rows.parquet").exists()


def test_a_default_cache_or_run_dir_inside_a_folder_input_is_refused_before_reading(tmp_path, monkeypatch):
    _shards(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.toml"
    path.write_text(SHARDS.format(out="out", cache="c").replace('[cache]\ndir = "c"\n', ""), encoding="utf-8")
    monkeypatch.setenv("DQF_CACHE_DIR", str(tmp_path / "shards" / "cache"))
    with pytest.raises(dqf.DqfError) as info:
        dqf.run(path)
    assert str(info.value).startswith("cache.dir: shards/cache is inside the input folder shards")
    monkeypatch.setenv("DQF_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(dqf.DqfError) as info:
        dqf.run(path, run_dir=tmp_path / "shards" / "run")
    assert str(info.value).startswith("output.dir: shards/run is inside the input folder shards")
    first = dqf.run(path)  # outside: runs, and a second run reads the same 6 rows, not its own outputs
    second = dqf.run(path)
    assert first.manifest["counts"]["rows_read"] == second.manifest["counts"]["rows_read"] == 6


COL_PLUGIN = '''import dqf
from pydantic import Field


class ColOptions(dqf.PluginOptions):
    column: str = Field(description="The column to write.")


class ColScorer(dqf.Scorer):
    name = "col"
    Options = ColOptions

    def columns(self):
        import polars as pl

        return {self.options.column: pl.Boolean}

    def score(self, batch):
        import polars as pl

        return batch.select(pl.lit(True).alias(self.options.column))


@dqf.hookimpl
def dqf_register_scorers(register):
    register(ColScorer)
'''


@pytest.mark.parametrize("shape", ["chain", "fan"])
def test_ten_thousand_steps_validate_in_linear_time(tmp_path, shape):
    # Measured (not asserted: speed belongs to bench/): all from input took 10 s, a chain of 2,000 steps 68 s and
    # 10,000 did not finish in 300 s; now 0.6 s and 1.1 s. This test guards correctness at that size.
    (tmp_path / "col.py").write_text(COL_PLUGIN, encoding="utf-8")
    n = 10_000
    steps = "".join(f'[[steps]]\nid = "s{i}"\nfrom = "{f"s{i - 1}" if shape == "chain" and i else "input"}"\n'
                    f'score = {{ plugin = "col", column = "c{i}" }}\n'
                    f'where = "c{i}{f" and c{i - 1}" if shape == "chain" and i else ""}"\n' for i in range(n))
    path = tmp_path / "many.toml"
    path.write_text('plugins = ["col.py"]\n[input]\npath = "pool.jsonl"\n[output]\ndir = "out"\n' + steps,
                    encoding="utf-8")
    recipe = dqf.validate(path)
    assert len(recipe.steps) == n and recipe.steps[0].id == "s0"
    bad = path.read_text(encoding="utf-8").replace('where = "c9999 and c9998"', 'where = "c9999 and c5"') \
        if shape == "chain" else path.read_text(encoding="utf-8").replace('where = "c9999"', 'where = "c5"')
    path.write_text(bad, encoding="utf-8")
    if shape == "chain":  # c5 is upstream on the chain: still valid
        dqf.validate(path)
    else:  # on a fan, s5 is a sibling: its column is not on s9999's path
        with pytest.raises(RecipeError, match=r"steps\[9999\]\.where: column 'c5' is not produced by this step or an "
                                              r"earlier step on its path \(available: c9999, id, input, instruction"):
            dqf.validate(path)


@pytest.mark.parametrize("option, message", [
    ("k = true", "steps[0].select.k: Input should be a valid integer"),
    ('k = "3"', "steps[0].select.k: Input should be a valid integer"),
    ("k = 2.0", "steps[0].select.k: Input should be a valid integer"),
    ("fraction = nan", "steps[0].select.fraction: Input should be a finite number"),
    ("fraction = inf", "steps[0].select.fraction: Input should be a finite number"),
])
def test_plugin_options_take_their_own_type_only(tmp_path, option, message):
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\n' + BODY.replace("fraction = 1.0", option), encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        dqf.validate(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_an_integer_is_still_a_number_where_a_float_is_asked(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "t"\n' + BODY.replace("fraction = 1.0", "fraction = 1"), encoding="utf-8")
    assert dqf.validate(path).steps[0].plugin.options.fraction == 1.0
