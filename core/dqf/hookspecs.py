"""The hook specifications: the only contract between the dqf engine and its plugins."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("dqf")
hookimpl = pluggy.HookimplMarker("dqf")


@hookspec
def dqf_register_scorers(register):
    """Register scorer classes.

    :param register: call ``register(ScorerClass)`` once per :class:`dqf.Scorer` subclass.
        The class must define a unique ``name`` and an ``Options`` model.
    :return: ignored.

    Scorers add columns to batches of rows (quality, perplexity, judge ratings, ...).
    """


@hookspec
def dqf_register_selectors(register):
    """Register selector classes.

    :param register: call ``register(SelectorClass)`` once per :class:`dqf.Selector` subclass.
    :return: ignored.

    Selectors pick a subset of rows (threshold, top-k, k-center greedy, ...) from the
    columns earlier steps computed.
    """


@hookspec
def dqf_register_probes(register):
    """Register necessity-probe classes.

    :param register: call ``register(ProbeClass)`` once per :class:`dqf.Probe` subclass.
    :return: ignored.

    Probes are model-aware: they may fine-tune or run the user's model on another step's
    rows and add columns (e.g. how badly the model still answers each instruction).
    """


@hookspec
def dqf_register_embedders(register):
    """Register embedder classes.

    :param register: call ``register(EmbedderClass)`` once per :class:`dqf.Embedder` subclass.
    :return: ignored.

    Embedders turn texts into float32 vectors. Selectors (k-center) and scorers
    (reference similarity) name them in their options, e.g.
    ``embedder = { plugin = "hf-encoder", model = "bert-base-uncased" }``; the engine caches
    their vectors per text on disk.
    """


@hookspec
def dqf_register_backends(register):
    """Register LM backend classes.

    :param register: call ``register(BackendClass)`` once per :class:`dqf.Backend` subclass.
    :return: ignored.

    Backends are where model plugins get generated answers, next-token probabilities and
    answer losses: transformers in-process (``transformers``), a vLLM engine (``vllm``), an
    OpenAI-compatible server (``openai``). A plugin names one in its options, e.g.
    ``backend = { plugin = "vllm", tensor_parallel_size = 2 }``; see :class:`dqf.Backend`.
    """


@hookspec
def dqf_register_commands(cli):
    """Add commands to the ``dqf`` command-line tool.

    :param cli: the root :class:`click.Group`; call ``@cli.command()`` on it.
    :return: ignored.
    """


@hookspec
def dqf_run_start(recipe, run_dir):
    """Called once before the first step of ``dqf run``.

    :param recipe: the validated :class:`dqf.recipe.Recipe`.
    :param run_dir: :class:`pathlib.Path` of the output directory.
    :return: ignored.
    """


@hookspec
def dqf_run_end(recipe, run_dir, manifest):
    """Called once after every output file of ``dqf run`` is written.

    :param recipe: the validated :class:`dqf.recipe.Recipe`.
    :param run_dir: :class:`pathlib.Path` of the output directory.
    :param manifest: the ``manifest.json`` contents as a dict.
    :return: ignored.
    """
