"""`hf-encoder` embedder: CLS, mean or last-token pooled last hidden states of any Hugging Face model — an encoder (MoDS
uses BERT's CLS) or a causal LM (DEITA embeds the last token of a vicuna-rendered conversation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dqf import BASE_COLUMNS, Embedder, PluginOptions
from dqf.lm import ModelMixin, collate, effective_max_length, forward_mode, length_batches, question, vicuna_conversation

# The embedding cache hands embed() this many batches' worth of texts per call, so sorting a
# call's texts by length groups similar lengths and dynamic padding wastes little compute.
_BATCHES_PER_CALL = 8


class HfEncoderOptions(PluginOptions):
    model: str = Field(default="bert-base-uncased",
                       description="Model folder, pkg:NAME (a model shipped in a Python package) or hub id; "
                                   "loaded with transformers.AutoModel. MoDS uses bert-base-uncased.")
    pooling: Literal["cls", "mean", "last"] = Field(
        default="cls", description="cls: the first token's last hidden state (as MoDS); mean: the average over "
                                   "non-padding tokens (as sentence-transformers models expect); last: the last "
                                   "non-padding token's (a causal LM's summary of the text, as DEITA embeds).")
    template: Literal["none", "vicuna"] = Field(
        default="none", description="none: embed `field` as it is; vicuna: the row as DEITA embeds it, its "
                                    "exchange rendered with FastChat's vicuna_v1.1 template (system prompt, "
                                    "'USER: q ASSISTANT: a</s>'); `field` is not used then.")
    max_length: int = Field(default=96, gt=0, description="Tokens per text, longer texts are truncated (MoDS: 96).")
    field: str = Field(default="instruction",
                       description="Text to embed: instruction, prompt (instruction + input), output, both, "
                                   "or any string column.")
    normalize: bool = Field(default=False, description="Scale every vector to unit L2 norm.")
    batch_size: int = Field(default=64, gt=0, description="Texts per forward pass.")
    device: str = Field(default="auto", description="auto (cuda, then mps, then cpu) or a torch device string.")
    # float32 by default, as the reference runs BERT: k-center distances are sensitive to rounding.
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = Field(
        default="float32", description="Weights' dtype; auto: bf16/fp16 on accelerators, fp32 on CPU. "
                                       "Vectors are returned as float32 either way.")


class HfEncoderEmbedder(ModelMixin, Embedder):
    """Embed texts with a transformers encoder: sorted by length, dynamically padded, CLS or masked-mean pooled."""

    name = "hf-encoder"
    version = "1"
    Options = HfEncoderOptions
    # batch_size changes speed, not the vectors (padding is masked out), so it must not invalidate
    # cached embeddings of a large pool.
    cache_ignore = frozenset({"batch_size"})

    def __init__(self, options=None):
        super().__init__(options)
        self.batch_size = self.options.batch_size * _BATCHES_PER_CALL
        self.model = None
        self.tokenizer = None
        self.device = None
        self._max_length = self.options.max_length

    def identity(self):
        # The device is left out so CPU and GPU runs share cached vectors; the precision is not.
        return {"model": self.model_ref().identity, "dtype": self.model_identity()["dtype"]}

    def texts(self, rows):
        if self.options.template == "vicuna":
            return [vicuna_conversation([(question(i or "", x or ""), o or "")])
                    for i, x, o in zip(rows["instruction"], rows["input"], rows["output"])]
        return super().texts(rows)

    def requires(self):
        if self.options.template != "none":
            return set()
        field = self.options.field
        return set() if field in BASE_COLUMNS or field in ("prompt", "both") else {field}

    def setup(self):
        if self.model is not None:
            return
        self.device = self.placement()[0]
        tok, model = self.load_pretrained("AutoModel")
        # CLS pooling reads position 0, so padding must go on the right whatever the tokenizer's default.
        tok.padding_side = "right"
        if tok.pad_token_id is None:  # decoder-style tokenizers; padded positions are masked anyway
            tok.pad_token = tok.eos_token or tok.unk_token
        self.tokenizer, self.model = tok, model
        self._max_length = effective_max_length(self.options.max_length, model.config, tok)

    def embed(self, texts):
        import numpy as np
        import torch

        self.setup()
        hidden = int(self.model.config.hidden_size)
        if not texts:
            return np.zeros((0, hidden), dtype=np.float32)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self._max_length, padding=False)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids")
        out = np.empty((len(ids), hidden), dtype=np.float32)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with forward_mode(self.device):
            for chunk in length_batches([len(x) for x in ids], self.options.batch_size):
                rows = [{"input_ids": ids[i], **({"token_type_ids": types[i]} if types is not None else {})}
                        for i in chunk]
                inputs = collate(rows, pad, side="right")  # right: the CLS vector must sit at position 0
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                h = self.model(**inputs).last_hidden_state.float()
                if self.options.pooling == "cls":
                    vec = h[:, 0]
                elif self.options.pooling == "last":  # right padding: the last real token sits at length - 1
                    last = inputs["attention_mask"].sum(dim=1) - 1
                    vec = h[torch.arange(h.shape[0], device=h.device), last]
                else:  # masked mean, so a text's vector does not depend on how much padding its batch has
                    m = inputs["attention_mask"].unsqueeze(-1).to(h.dtype)
                    vec = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
                if self.options.normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=-1)
                out[np.asarray(chunk)] = vec.cpu().numpy()
        return out
