"""Tiny random models built from configs and saved to disk, so tests load them through the real from_pretrained path."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

EXAMPLE_POOL = Path(__file__).resolve().parents[1] / "examples" / "data" / "alpaca_2k.jsonl"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def _vocab(size: int = 3000) -> list[str]:
    words = Counter()
    for line in EXAMPLE_POOL.read_text(encoding="utf-8").splitlines()[:800]:
        row = json.loads(line)
        for text in row.values():
            words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    base = ["user", "assistant", "system", ":", "###", "instruction", "response", "input"]
    vocab = SPECIALS + base + [w for w, _ in words.most_common(size) if w not in base]
    return list(dict.fromkeys(vocab))


def save_tokenizer(path: Path, *, chat: bool = False):
    """A word-level fast tokenizer over the example pool's words, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocab())}
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


def _save(model, tok_path: Path, path: Path, *, chat: bool = False) -> Path:
    model.save_pretrained(path)
    save_tokenizer(path, chat=chat)
    return path


def tiny_deberta_classifier(path: Path, seed: int = 0) -> Path:
    """DeBERTa-v2 sequence classifier with one logit, as reward models are."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(seed)
    n = len(_vocab())
    cfg = DebertaV2Config(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0,
                          relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16)
    return _save(DebertaV2ForSequenceClassification(cfg), path, path)


def tiny_bert(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    return _save(BertModel(cfg), path, path)


def tiny_llama(path: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Llama causal LM with tied embeddings. A wider ``initializer_range`` (e.g. 0.2) gives logits enough range
    that LoRA fine-tuning, which cannot touch the embeddings, moves the loss by nats rather than hundredths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = _vocab()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=vocab.index("[PAD]"), bos_token_id=vocab.index("<s>"),
                      eos_token_id=vocab.index("</s>"), tie_word_embeddings=True,
                      initializer_range=initializer_range)
    return _save(LlamaForCausalLM(cfg), path, path, chat=True)


def tiny_reward_model(path: Path, pairs: list[tuple[str, str]], seed: int = 0) -> Path:
    """A tiny DeBERTa-v2 reward model whose scores spread over about a unit, centred so half of ``pairs`` score > 0.

    Random models at the usual init give near-constant scores, which would make thresholds
    like MoDS's ``reward > 0.0`` and parity checks vacuous.
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(seed)
    n = len(_vocab())
    cfg = DebertaV2Config(vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0,
                          relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                          initializer_range=0.2)
    model = DebertaV2ForSequenceClassification(cfg).eval()
    save_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        scores = [model(**tok(q, a, truncation=True, max_length=128, return_tensors="pt")).logits[0, 0].item()
                  for q, a in pairs]
        model.classifier.bias -= float(np.median(scores))
    model.save_pretrained(path)
    return path
