"""`where` is a row predicate only: it cannot read files or reach the network, and it must be true/false valued."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

import dqf
from dqf import RecipeError
from dqf.where import FUNCTIONS, WhereError, parse_where

pytestmark = pytest.mark.usefixtures("words_module")


def _recipe(write_recipe, where: str):
    return write_recipe(f'''
        name = "w"
        plugins = ["words.py"]
        [input]
        path = "pool.jsonl"
        [output]
        dir = "out"
        [[steps]]
        id = "q"
        score = {{ plugin = "words" }}
        where = "{where}"
    ''')


@pytest.mark.parametrize("where,message", [
    ("output_words > (SELECT count(*) FROM read_csv('x.csv'))", "a subquery is not allowed in `where`"),
    ("output_words IN (SELECT 1)", "a subquery is not allowed; IN takes a list of literals"),
    ("read_csv('x.csv') IS NULL", "function 'read_csv' is not allowed in `where` (allowed: abs, "),
    ("output_words > 1; DROP TABLE x", "unexpected character ';' at position 17"),
    ("EXISTS (SELECT 1)", "EXISTS is not allowed here"),
])
def test_non_predicates_are_rejected_naming_the_construct(where, message):
    with pytest.raises(WhereError) as info:
        parse_where(where)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("where", [
    "words_ok", "words_ok and output_words >= 3", "NOT words_ok OR output_ttr IS NULL",
    "lower(instruction) LIKE '%poem%'", "output_words BETWEEN 1 AND 5", "n_turns NOT IN (2, 3)",
    'abs(output_words - instruction_words) < 10 AND \\"output_ttr\\" > 0.5',
])
def test_row_predicates_validate_and_run(write_recipe, write_jsonl, where):
    write_jsonl([{"instruction": "Write a poem.", "input": "", "output": "Roses are red"},
                 {"instruction": "Say hi.", "input": "", "output": ""}])
    result = dqf.run(_recipe(write_recipe, where))
    assert result.rows.height == 2 and set(result.rows["selected"].to_list()) <= {True, False}


def test_where_reads_no_file_and_no_url_at_validation_or_run(tmp_path, write_recipe, write_jsonl):
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"a\n1\n")

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    write_jsonl([{"instruction": "a", "input": "", "output": "b c"}])
    try:
        for source in (f"http://127.0.0.1:{server.server_port}/x.csv", str(fifo)):
            path = _recipe(write_recipe, f"output_words > (SELECT count(*) FROM read_csv('{source}'))")
            done = []

            def check():
                with pytest.raises(RecipeError) as info:
                    dqf.validate(path)
                done.append(str(info.value))

            t = threading.Thread(target=check, daemon=True)
            t.start()
            t.join(20)  # opening the FIFO would block forever
            assert done and "steps[0].where: a subquery is not allowed in `where`" in done[0]
            with pytest.raises(RecipeError, match="a subquery is not allowed"):
                dqf.run(path)
    finally:
        server.shutdown()
    assert hits == []


@pytest.mark.parametrize("where,message", [
    ("output_words", "steps[0].where: column 'output_words' is Int32, not true/false; write a condition such as "
                     "output_words > 0"),
    ("1", "steps[0].where: '1' is a value, not true/false"),
    ("output_words + 1", "steps[0].where: 'output_words + 1' is a value, not true/false"),
])
def test_a_where_that_is_not_true_false_is_a_recipe_error(write_recipe, where, message):
    with pytest.raises(RecipeError) as info:
        dqf.validate(_recipe(write_recipe, where))
    assert message in str(info.value)


def test_the_allowed_functions_are_scalar():
    assert "read_csv" not in FUNCTIONS and "read_parquet" not in FUNCTIONS and "lower" in FUNCTIONS
