"""Supervised fine-tuning of a causal LM (LoRA or full) in a plain torch loop; loss on response tokens only.

Public through ``dqf``: :class:`TrainConfig`, :class:`TrainResult`, :class:`TrainExample`,
:func:`training_example`, :func:`training_examples`, :func:`add_lora`, :func:`train_causal_lm`,
:func:`response_loss`, :func:`save_trained`, :func:`load_adapter`, :func:`merged_for_inference`.
Used by the ``mods-necessity`` probe and ``dqf compare --finetune``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from dqf.errors import DqfError
from dqf.lm.batching import forward_mode
from dqf.store.atomic import atomic_dir

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"  # "lora" | "full"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | str = ("q_proj", "k_proj", "v_proj", "o_proj")
    epochs: int = 3
    learning_rate: float = 2e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int | None = None
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass
class TrainExample:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainResult:
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def training_example(prompt: Sequence[int], response: Sequence[int], max_length: int) -> TrainExample | None:
    """Prompt then response, cut at ``max_length`` (as the reference does); None when no response token is left."""
    ids = list(prompt) + list(response)
    labels = [IGNORE_INDEX] * len(prompt) + list(response)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(t == IGNORE_INDEX for t in labels[1:]):  # position 0 is never predicted
        return None
    return TrainExample(ids, labels)


def training_examples(tokenizer, rows: Iterable[Sequence[str]], *, template: str, max_length: int,
                      eos_id: int) -> tuple[list[TrainExample], int]:
    """Training examples for ``(instruction, input, output)`` rows, and how many rows were dropped.

    Each is the prompt (:func:`dqf.prompt_ids` with ``template``) then the answer
    (:func:`dqf.response_ids`, end marker included), cut at ``max_length``; a row whose answer
    is cut off entirely is dropped.
    """
    from dqf.lm.generate import prompt_ids, response_ids

    examples, dropped = [], 0
    for instruction, input_, output in rows:
        ex = training_example(prompt_ids(tokenizer, instruction, input_, template),
                              response_ids(tokenizer, instruction, input_, output, template, eos_id), max_length)
        if ex is None:
            dropped += 1
        else:
            examples.append(ex)
    return examples, dropped


def _collate(batch: Sequence[TrainExample], pad_id: int):
    """Right-padded tensors; the mask comes from lengths, since pad may equal eos and eos is a training target."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def _loss_sum(model, ids, labels, mask, autocast_dtype=None):
    """Summed next-token cross-entropy over label positions, and how many positions that is."""
    import torch
    import torch.nn.functional as F

    ctx = (torch.autocast(ids.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    target = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((target != IGNORE_INDEX).sum())


def response_loss(model, examples: Sequence[TrainExample], pad_id: int, batch_size: int = 8) -> float:
    """Mean per-token loss on the response tokens of ``examples`` (eval mode, no gradients)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with forward_mode(device):
        for i in range(0, len(examples), batch_size):
            ids, labels, mask = (t.to(device) for t in _collate(examples[i:i + batch_size], pad_id))
            loss, n = _loss_sum(model, ids, labels, mask)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


@contextlib.contextmanager
def _quiet_peft():
    """peft reads a property transformers 5 deprecates; the warning is noise nobody running dqf can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model, cfg: TrainConfig):
    """Wrap ``model`` with fresh LoRA adapters; only they are trained."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules if isinstance(cfg.lora_target_modules, str) else list(cfg.lora_target_modules)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    torch.manual_seed(cfg.seed)  # LoRA A matrices start random: same seed, same adapter
    try:
        with _quiet_peft():
            return get_peft_model(model, lcfg)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear)})
        raise DqfError(f"lora_target_modules: {exc} (linear layers of this model: {', '.join(names)}; "
                       f"or use \"all-linear\")") from None


def _checkpointing(model, on: bool) -> None:
    """Activation (gradient) checkpointing on or off, by the name this transformers version uses."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"  # transformers >= 5
    if on:
        # Non-reentrant checkpointing needs no input gradients, so it works with frozen embeddings (LoRA) too.
        getattr(model, f"{prefix}_checkpointing_enable")(**{f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}})
    else:
        getattr(model, f"{prefix}_checkpointing_disable")()


def train_causal_lm(model, examples: Sequence[TrainExample], cfg: TrainConfig, *, pad_id: int, autocast_dtype=None,
          progress: Callable | None = None) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples``.

    AdamW with the chosen warm-up schedule; each optimizer step averages the loss over all
    response tokens of its ``gradient_accumulation_steps`` micro-batches (as the Trainer does),
    so short and long answers weigh per token. ``progress(total)`` must return a context
    manager yielding ``advance(n)``; it advances once per optimizer step.
    """
    import torch
    from transformers import get_scheduler

    if not examples:
        raise DqfError("nothing to fine-tune on: every training row's response was cut off by max_length")
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    micro_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)

    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched_name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                              num_training_steps=total)
    result = TrainResult(examples=len(examples))
    model.train()
    start = time.perf_counter()
    bar = progress(total) if progress is not None else contextlib.nullcontext(lambda n=1: None)
    with bar as advance, forward_mode(device, grad=True):
        for _epoch in range(cfg.epochs):
            if result.steps >= total:
                break
            order = torch.randperm(len(examples), generator=shuffle).tolist()
            micro = [[examples[i] for i in order[j:j + cfg.batch_size]] for j in range(0, len(order), cfg.batch_size)]
            epoch_loss, epoch_tokens = 0.0, 0
            for g in range(0, len(micro), cfg.gradient_accumulation_steps):
                group = micro[g:g + cfg.gradient_accumulation_steps]
                n_targets = sum(1 for b in group for e in b for t in e.labels[1:] if t != IGNORE_INDEX)
                for batch in group:
                    ids, labels, mask = (t.to(device) for t in _collate(batch, pad_id))
                    loss, n = _loss_sum(model, ids, labels, mask, autocast_dtype)
                    (loss / n_targets).backward()
                    epoch_loss += float(loss.detach())
                    epoch_tokens += n
                    result.tokens += int(mask.sum())
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                advance(1)
                if result.steps >= total:
                    break
            result.epoch_losses.append(epoch_loss / max(epoch_tokens, 1))
    result.seconds = time.perf_counter() - start
    if cfg.gradient_checkpointing:
        _checkpointing(model, False)
    model.eval()
    return result


def save_trained(model, target: Path, meta: dict) -> None:
    """Write the adapter (LoRA) or the whole model (full) plus ``meta`` as train.json to ``target`` in one rename.

    Readers take a folder with train.json as complete; the rename means none ever sees half of one.
    """
    import json

    with atomic_dir(target, replace=True) as tmp:  # replace: a folder without train.json is incomplete
        model.save_pretrained(tmp)  # a PeftModel saves only its adapter weights and config
        (tmp / "train.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")


def merged_for_inference(model, method: str, dtype=None):
    """The trained model ready to generate: LoRA adapters merged into the base weights (no per-layer overhead),
    and on the CPU its Linear layers swapped for oneDNN ones (:func:`dqf.onednn_linears`); inference only."""
    from dqf.lm.onednn import onednn_linears

    if method == "lora":
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    onednn_linears(model)
    return model


def load_adapter(base_model, path: Path):
    """``base_model`` with the saved LoRA adapter at ``path`` merged in."""
    from peft import PeftModel

    with _quiet_peft():
        model = PeftModel.from_pretrained(base_model, str(path))
    return merged_for_inference(model, "lora")
