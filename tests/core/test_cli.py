"""The `dqf` command: run through the installed console script, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import dqf
from dqf import cli as dqf_cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.toml"


def _dqf_exe() -> str:
    exe = shutil.which("dqf", path=str(Path(sys.executable).parent)) or shutil.which("dqf")
    assert exe, "the dqf console script is not installed"
    return exe


def dqf_cmd(*args, cwd=None):
    return subprocess.run([_dqf_exe(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dqf: error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


pytestmark = pytest.mark.usefixtures("words_module")  # POOL_RECIPE names it: plugins = ["words.py"]

POOL_RECIPE = """
name = "cli"
plugins = ["words.py"]
[input]
path = "pool.jsonl"
[output]
dir = "out"
[[steps]]
id = "quality"
score = { plugin = "words" }
[[steps]]
id = "top"
select = { plugin = "top-k", column = "output_words", k = 5 }
"""


def test_version():
    proc = dqf_cmd("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"dqf, version {dqf.__version__}"


def test_help_lists_commands():
    proc = dqf_cmd("--help")
    assert proc.returncode == 0
    for cmd in ("run", "validate", "plugins", "cache"):
        assert cmd in proc.stdout


def test_plugins_json():
    proc = dqf_cmd("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in info}
    expected = {
        "heuristic": ("scorer", "dqf_contrib.heuristic.heuristic"),
        "top-k": ("selector", "dqf_plugins.top_k"),
        "threshold": ("selector", "dqf_plugins.threshold"),
        "random": ("selector", "dqf_plugins.random"),
    }
    for name, (kind, module) in expected.items():
        p = by_name[name]
        assert p["kind"] == kind
        assert p["module"] == module
        assert p["distribution"] == "dqf"
        assert p["distribution_version"] == dqf.__version__
        assert isinstance(p["options_schema"], dict) and p["options_schema"]["type"] == "object"
    assert set(by_name["top-k"]["options_schema"]["properties"]) == {"k", "fraction", "column", "descending"}
    assert set(by_name["threshold"]["options_schema"]["properties"]) == {"column", "min", "max", "inclusive"}
    assert set(by_name["random"]["options_schema"]["properties"]) == {"k", "fraction", "seed"}
    assert "min_output_words" in by_name["heuristic"]["options_schema"]["properties"]
    assert by_name["heuristic"]["options_schema"]["additionalProperties"] is False


def test_plugins_table():
    proc = dqf_cmd("plugins")
    assert proc.returncode == 0, proc.stderr
    for name in ("heuristic", "top-k", "threshold", "random"):
        assert name in proc.stdout


def test_run_quickstart(tmp_path):
    out = tmp_path / "qs"
    proc = dqf_cmd("run", QUICKSTART, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert Path(proc.stdout.strip().splitlines()[-1]).resolve() == out.resolve()
    lines = (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 200 and manifest["counts"]["rows_read"] == 2000
    assert pl.read_parquet(out / "rows.parquet")["selected"].sum() == 200


def test_run_with_limit_and_cache_dir(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe(POOL_RECIPE)
    cache = tmp_path / "c"
    proc = dqf_cmd("run", recipe, "--limit", 12, "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["rows_read"] == 12 and manifest["input"]["limit"] == 12
    assert manifest["cache"]["dir"] == str(cache)
    assert list((cache / "scores" / "words").rglob("*.parquet"))


def test_run_rejects_bad_limit(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe(POOL_RECIPE)
    proc = dqf_cmd("run", recipe, "--limit", 0)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--limit" in proc.stderr


def test_validate():
    proc = dqf_cmd("validate", QUICKSTART)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"{QUICKSTART}: OK: 2 steps: quality (score heuristic) -> top (select top-k); "
                                   "output: top")


def test_validate_does_not_read_input(tmp_path, write_recipe):
    recipe = write_recipe(POOL_RECIPE)  # pool.jsonl does not exist: validation is about the recipe only
    proc = dqf_cmd("validate", recipe)
    assert proc.returncode == 0, proc.stderr
    assert "OK: 2 steps" in proc.stdout


def test_validate_reports_recipe_errors(tmp_path, write_recipe):
    recipe = write_recipe(POOL_RECIPE.replace("k = 5", "k = 5, fraction = 0.5"))
    proc = dqf_cmd("validate", recipe)
    line = assert_one_line_error(proc, str(recipe), "steps[1].select", "give exactly one of `k` or `fraction`")
    assert line.startswith(f"dqf: error: {recipe}: ")


def test_missing_recipe_file(tmp_path):
    proc = dqf_cmd("run", tmp_path / "nope.toml")
    line = assert_one_line_error(proc)
    assert line == f"dqf: error: {tmp_path / 'nope.toml'}: recipe file not found"


def test_missing_input_file(tmp_path, write_recipe):
    recipe = write_recipe(POOL_RECIPE)
    proc = dqf_cmd("run", recipe, cwd=tmp_path)
    line = assert_one_line_error(proc, str(recipe))  # names the recipe that points at the missing input
    assert line.endswith(": input.path: no such file or folder: pool.jsonl")


def test_bad_row_names_file_and_line(tmp_path, write_recipe, alpaca_rows):
    lines = [json.dumps(r) for r in alpaca_rows[:3]] + ['{"instruction": "q", "output": 3}']
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    recipe = write_recipe(POOL_RECIPE)
    proc = dqf_cmd("run", recipe, cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert line == "dqf: error: pool.jsonl:4: field 'output': expected a string, got int"
    assert not (tmp_path / "out" / "selected.jsonl").exists()


def test_undecodable_line_names_file_and_line(tmp_path, write_recipe, alpaca_rows):
    lines = [json.dumps(r) for r in alpaca_rows[:2]] + ["{oops", json.dumps(alpaca_rows[2])]
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    proc = dqf_cmd("run", write_recipe(POOL_RECIPE), cwd=tmp_path)
    assert_one_line_error(proc, "pool.jsonl:3: invalid JSON")


def test_unwritable_out(tmp_path, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    (tmp_path / "afile").write_text("x")
    proc = dqf_cmd("run", write_recipe(POOL_RECIPE), "--out", tmp_path / "afile" / "out")
    assert_one_line_error(proc, "output.dir: cannot write to ", "afile/out")


def test_cache_path_follows_env(tmp_path, isolated_cache):
    proc = dqf_cmd("cache", "path")
    assert proc.returncode == 0
    assert proc.stdout.strip() == str(isolated_cache)


def test_main_in_process_reports_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        dqf_cli.main(["run", str(tmp_path / "missing.toml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == f"dqf: error: {tmp_path / 'missing.toml'}: recipe file not found\n"


def test_main_in_process_success(tmp_path, capsys, write_jsonl, write_recipe, alpaca_rows):
    write_jsonl(alpaca_rows)
    recipe = write_recipe(POOL_RECIPE)
    dqf_cli.main(["run", str(recipe), "--out", str(tmp_path / "o")])  # returns normally on success
    assert capsys.readouterr().out.strip().endswith("o")
    assert len((tmp_path / "o" / "selected.jsonl").read_text().splitlines()) == 5


def test_main_version_exits_zero(capsys):
    try:
        dqf_cli.main(["--version"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert capsys.readouterr().out.strip() == f"dqf, version {dqf.__version__}"


def test_multiple_recipe_errors_each_on_own_line(tmp_path, write_recipe):
    recipe = write_recipe(POOL_RECIPE.replace('id = "top"', 'id = "top"\nbogus = 1')
                          .replace('name = "cli"', 'name = "cli"\ncolour = "red"'))
    proc = dqf_cmd("validate", recipe)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"dqf: error: {recipe}: ") for line in lines)
    assert sorted(line.split(f"{recipe}: ", 1)[1] for line in lines) == ["colour: unknown key",
                                                                          "steps[1].bogus: unknown key"]
