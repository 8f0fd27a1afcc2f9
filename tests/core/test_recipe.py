"""Recipe loading and validation: every bad recipe names its file, the key path and what is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import dqf
from dqf import RecipeError
from words_plugin import PATH as WORDS

HEADER = f"""\
name = "t"
plugins = ["{WORDS}"]

[input]
path = "pool.jsonl"

[output]
dir = "out"
"""


def recipe_text(steps: str, header: str = HEADER) -> str:
    return header + "\n" + textwrap.dedent(steps)


# (id, full recipe text, [(key path, message fragment), ...]) -- each pair must appear on one line.
BAD_RECIPES = [
    (
        "toml-syntax",
        'name = "t"\n[input\npath = "x"\n',
        [("", "TOML syntax error")],
    ),
    (
        "unknown-top-level-key",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            """,
            header='colour = "blue"\n' + HEADER,
        ),
        [("colour", "unknown key")],
    ),
    (
        "unknown-key-in-step",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            wher = "words_ok"
            """
        ),
        [("steps[0].wher", "unknown key")],
    ),
    (
        "missing-input",
        textwrap.dedent(
            """
            name = "t"

            [output]
            dir = "out"

            [[steps]]
            id = "a"
            score = { plugin = "words" }
            """
        ),
        [("input", "required key is missing")],
    ),
    (
        "missing-steps",
        HEADER,
        [("steps", "required key is missing")],
    ),
    (
        "step-with-score-and-select",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            select = { plugin = "random", k = 3 }
            """
        ),
        [("steps[0]", "exactly one of score / select / probe is required (got score and select)")],
    ),
    (
        "step-with-no-kind",
        recipe_text(
            """
            [[steps]]
            id = "a"
            """
        ),
        [("steps[0]", "exactly one of score / select / probe is required (got none)")],
    ),
    (
        "step-without-plugin-name",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { min_output_words = 2 }
            """
        ),
        [("steps[0].score.plugin", "required key is missing")],
    ),
    (
        "unknown-plugin-close-match",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "wrods" }
            """
        ),
        [("steps[0].score.plugin", "unknown scorer 'wrods'"),
         ("steps[0].score.plugin", "did you mean 'words'?"),
         ("steps[0].score.plugin", "available scorers: ")],
    ),
    (
        "plugin-of-wrong-kind",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "top-k", column = "output_words", k = 3 }
            """
        ),
        [("steps[0].score.plugin", "'top-k' is a selector, not a scorer")],
    ),
    (
        "plugin-option-typo",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }

            [[steps]]
            id = "top"
            select = { plugin = "top-k", column = "output_words", kk = 3 }
            """
        ),
        [("steps[1].select.kk", "unknown key")],
    ),
    (
        "bad-option-value",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }

            [[steps]]
            id = "top"
            select = { plugin = "top-k", column = "output_words", k = 0 }
            """
        ),
        [("steps[1].select.k", "greater than 0")],
    ),
    (
        "threshold-without-bounds",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }

            [[steps]]
            id = "cut"
            select = { plugin = "threshold", column = "output_words" }
            """
        ),
        [("steps[1].select", "give `min`, `max` or both")],
    ),
    (
        "from-missing-step",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }

            [[steps]]
            id = "top"
            from = "qualty"
            select = { plugin = "top-k", column = "output_words", k = 3 }
            """
        ),
        [("steps[1].from", "no step with id 'qualty' (steps: quality, top)")],
    ),
    (
        "output-select-missing-step",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }
            """,
            header=HEADER.replace('dir = "out"', 'dir = "out"\nselect = ["quality", "nope"]'),
        ),
        [("output.select[1]", "no step with id 'nope'")],
    ),
    (
        "duplicate-step-id",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }

            [[steps]]
            id = "a"
            select = { plugin = "top-k", column = "output_words", k = 3 }
            """
        ),
        [("steps[1].id", "duplicate step id 'a' (also steps[0])")],
    ),
    (
        "invalid-step-id",
        recipe_text(
            """
            [[steps]]
            id = "two words"
            score = { plugin = "words" }
            """
        ),
        [("steps[0].id", "'two words' is not a valid step id")],
    ),
    (
        "reserved-step-id",
        recipe_text(
            """
            [[steps]]
            id = "input"
            score = { plugin = "words" }
            """
        ),
        [("steps[0].id", "'input' is reserved")],
    ),
    (
        "cycle-via-from",
        recipe_text(
            """
            [[steps]]
            id = "a"
            from = "b"
            score = { plugin = "words" }

            [[steps]]
            id = "b"
            from = "a"
            select = { plugin = "top-k", column = "output_words", k = 3 }
            """
        ),
        [("", "steps form a cycle: a -> b -> a")],
    ),
    (
        "unparseable-where",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }
            where = "output_words >"
            """
        ),
        [("steps[0].where", "the expression ends too early (in 'output_words >')")],
    ),
    (
        "where-unknown-column",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }
            where = "perplexity < 10"
            """
        ),
        [("steps[0].where", "column 'perplexity' is not produced by this step or an earlier step on its path")],
    ),
    (
        "selector-where-cannot-see-later-column",
        recipe_text(
            """
            [[steps]]
            id = "sample"
            select = { plugin = "random", k = 3 }
            where = "words_ok"

            [[steps]]
            id = "quality"
            score = { plugin = "words" }
            """
        ),
        [("steps[0].where", "column 'words_ok' is not produced")],
    ),
    (
        "selector-column-from-sibling-branch",
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "words" }

            [[steps]]
            id = "sample"
            from = "input"
            select = { plugin = "random", k = 10 }

            [[steps]]
            id = "top"
            select = { plugin = "top-k", column = "output_words", k = 3 }
            """
        ),
        [("steps[2].select", "needs column 'output_words', which no earlier step on its path produces")],
    ),
    (
        "two-steps-same-column",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }

            [[steps]]
            id = "b"
            score = { plugin = "words", min_words = 3 }
            """
        ),
        [("steps[1].score", "column 'words_ok' is also produced by step 'a'")],
    ),
    (
        "batch-size-zero",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            batch_size = 0
            """
        ),
        [("steps[0].batch_size", "greater than 0")],
    ),
    (
        "bad-input-format",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            """,
            header=HEADER.replace('path = "pool.jsonl"', 'path = "pool.jsonl"\nformat = "csv"'),
        ),
        [("input.format", "'alpaca'")],
    ),
    (
        "missing-local-plugin-module",
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "words" }
            """,
            header=HEADER.replace(f'plugins = ["{WORDS}"]', f'plugins = ["{WORDS}", "./nowhere.py"]'),
        ),
        [("plugins[1]", "local plugin module not found: ./nowhere.py")],
    ),
]


@pytest.mark.parametrize("text, expected", [pytest.param(t, e, id=i) for i, t, e in BAD_RECIPES])
def test_bad_recipe_reports_file_key_and_message(write_recipe, text, expected):
    path = write_recipe(text, name="bad.toml")
    with pytest.raises(RecipeError) as info:
        dqf.load_recipe(path)
    lines = info.value.lines
    assert lines, "a RecipeError must carry at least one line"
    for line in lines:
        assert line.startswith(f"{path}: "), f"line does not name the recipe file: {line!r}"
    for key, fragment in expected:
        prefix = f"{path}: {key}: " if key else f"{path}: "
        assert any(line.startswith(prefix) and fragment in line for line in lines), (
            f"expected a line starting {prefix!r} containing {fragment!r}; got:\n" + "\n".join(lines)
        )
    # The str() of the error is what the CLI prints: it has every line.
    assert str(info.value) == "\n".join(lines)


def test_bad_recipe_cases_are_distinct():
    texts = [t for _, t, _ in BAD_RECIPES]
    assert len(set(texts)) == len(texts) >= 12


def test_missing_recipe_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(RecipeError, match="recipe file not found") as info:
        dqf.load_recipe(path)
    assert str(path) in str(info.value)


def test_every_problem_is_reported_at_once(write_recipe):
    path = write_recipe(
        recipe_text(
            """
            [[steps]]
            id = "a"
            score = { plugin = "wrods" }

            [[steps]]
            id = "b"
            select = { plugin = "top-k", column = "output_words", kk = 3 }

            [[steps]]
            id = "c"
            from = "zzz"
            select = { plugin = "random", k = 1 }
            """
        )
    )
    with pytest.raises(RecipeError) as info:
        dqf.load_recipe(path)
    text = str(info.value)
    assert f"{path}: steps[0].score.plugin: unknown scorer 'wrods'" in text
    assert f"{path}: steps[1].select.kk: unknown key" in text
    assert f"{path}: steps[2].from: no step with id 'zzz'" in text


GOOD = recipe_text(
    """
    [[steps]]
    id = "top"
    from = "quality"
    select = { plugin = "top-k", column = "output_words", k = 5 }

    [[steps]]
    id = "quality"
    from = "input"
    score = { plugin = "words" }
    where = "words_ok and output_words >= 3"

    [[steps]]
    id = "sample"
    select = { plugin = "random", fraction = 0.5 }
    """
)


def test_good_recipe_validates_in_execution_order(write_recipe):
    path = write_recipe(GOOD)
    recipe, host = dqf.load_recipe(path)
    # File order is top, quality, sample; `top` reads from `quality`, so quality runs first.
    assert [s.id for s in recipe.steps] == ["quality", "top", "sample"]
    assert [s.id for s in recipe.steps_in_file_order] == ["top", "quality", "sample"]
    by_id = {s.id: s for s in recipe.steps}
    assert by_id["quality"].kind == "score" and by_id["quality"].plugin.name == "words"
    assert by_id["top"].plugin.options.k == 5
    assert "words_ok" in by_id["quality"].columns
    assert by_id["top"].columns == {}
    # `from` defaults to the previous step in the file.
    assert by_id["sample"].source == "quality"
    assert by_id["top"].source == "quality"
    assert by_id["quality"].source == "input"
    assert recipe.output_steps == ["sample"]
    assert host.get("scorer", "words").cls is type(by_id["quality"].plugin)
    assert dqf.validate(path).name == "t"


def test_from_defaults_to_previous_step_and_first_to_input(write_recipe):
    path = write_recipe(
        recipe_text(
            """
            [[steps]]
            id = "q"
            score = { plugin = "words" }

            [[steps]]
            id = "t"
            select = { plugin = "top-k", column = "output_words", k = 2 }

            [[steps]]
            id = "r"
            select = { plugin = "random", k = 1 }
            """
        )
    )
    recipe = dqf.validate(path)
    assert [(s.id, s.source) for s in recipe.steps] == [("q", "input"), ("t", "q"), ("r", "t")]
    assert [s.id for s in recipe.chain("r")] == ["q", "t", "r"]


def test_paths_resolve_relative_to_recipe_file(write_recipe, tmp_path):
    (tmp_path / "sub").mkdir()
    path = write_recipe(recipe_text('[[steps]]\nid = "q"\nscore = { plugin = "words" }\n'), name="sub/r.toml")
    recipe = dqf.validate(path)
    assert recipe.input_path == tmp_path / "sub" / "pool.jsonl"
    assert recipe.output_dir == tmp_path / "sub" / "out"


def test_validate_does_not_need_input_file(write_recipe, tmp_path):
    """Validation checks the recipe only: a missing input file is a run-time DataError, not a recipe error."""
    path = write_recipe(GOOD)
    assert not (tmp_path / "pool.jsonl").exists()
    recipe = dqf.validate(path)
    assert recipe.input_path == tmp_path / "pool.jsonl"
    assert not (tmp_path / "out").exists(), "validation must not create the output directory"


def test_validate_reads_no_input_rows(write_recipe, tmp_path, monkeypatch):
    # A malformed input file would fail any attempt to read it.
    (tmp_path / "pool.jsonl").write_bytes(b"\xff\xfe this is { not json\n")
    import dqf.io.readers

    def _forbidden(*args, **kwargs):
        raise AssertionError("validation read input rows")

    monkeypatch.setattr(dqf.io.readers, "read_input", _forbidden)
    recipe = dqf.validate(write_recipe(GOOD))
    assert [s.id for s in recipe.steps] == ["quality", "top", "sample"]


def test_overrides_are_validated_too(write_recipe):
    path = write_recipe(GOOD)
    with pytest.raises(RecipeError, match=r"steps: Input should be a valid list") as info:
        dqf.load_recipe(path, overrides={"steps": {"x": 1}})
    assert str(path) in str(info.value)
    recipe, _ = dqf.load_recipe(path, overrides={"output": {"dir": "elsewhere"}})
    assert recipe.output_dir.name == "elsewhere"


# -- the `dqf validate` command ---------------------------------------------------------------

def _dqf(*args, cwd):
    # The console script `dqf` is `dqf.cli:main`; run exactly that in a fresh interpreter.
    code = "import sys; from dqf.cli import main; sys.argv[0] = 'dqf'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_cli_validate_bad_recipe_prints_one_line_per_error(write_recipe, tmp_path):
    path = write_recipe(
        recipe_text(
            """
            [[steps]]
            id = "quality"
            score = { plugin = "wrods" }

            [[steps]]
            id = "top"
            select = { plugin = "top-k", column = "output_words", kk = 3 }
            """
        )
    )
    proc = _dqf("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert all(line.startswith(f"dqf: error: {path}: ") for line in lines), proc.stderr
    assert lines[0].startswith(f"dqf: error: {path}: steps[0].score.plugin: unknown scorer 'wrods'")
    assert lines[1] == f"dqf: error: {path}: steps[1].select.kk: unknown key"
    assert proc.stdout == ""


def test_cli_validate_toml_error_has_no_traceback(write_recipe, tmp_path):
    path = write_recipe("name = \n", name="broken.toml")
    proc = _dqf("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"dqf: error: {path}: TOML syntax error")


def test_cli_validate_good_recipe(write_recipe, tmp_path):
    path = write_recipe(GOOD)
    proc = _dqf("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OK: 3 steps" in proc.stdout
    assert "quality (score words) -> top (select top-k) -> sample (select random)" in proc.stdout
    assert "Traceback" not in proc.stderr
