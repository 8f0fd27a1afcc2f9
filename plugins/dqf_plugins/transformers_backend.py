"""`transformers` backend: the model runs in this process through transformers (dqf's own batched greedy loop, oneDNN
on CPU, length-grouped batches); the default backend of every model plugin."""

from __future__ import annotations

from dqf import Backend, PluginOptions
from dqf.lm import answer_losses, generate_answers, load_adapter, load_model, next_token_logprobs, resolve_model


class TransformersBackendOptions(PluginOptions):
    pass


class TransformersBackend(Backend):
    """In-process generation and next-token probabilities; the model stays in memory between calls."""

    name = "transformers"
    Options = TransformersBackendOptions
    capabilities = frozenset({"generate", "beam_search", "next_token", "answer_losses"})

    def __init__(self, options=None):
        super().__init__(options)
        self.model = None
        self.tokenizer = None

    def open(self, model, *, device=None, dtype=None):
        self.tokenizer = model.tokenizer
        if model.loaded is not None:
            self.model = model.loaded
        elif model.adapter is not None:  # merged into the base weights once: as fast as a plain model afterwards
            base = load_model(resolve_model(model.path), "AutoModelForCausalLM", device=device, dtype=dtype)
            self.model = load_adapter(base, model.adapter)
        else:
            self.model = load_model(resolve_model(model.path), "AutoModelForCausalLM", device=device, dtype=dtype,
                                    inference=True)
        self._device = next(self.model.parameters()).device

    def generate(self, prompts, *, max_new_tokens, num_beams=1, batch_size=None, on_batch=None):
        return generate_answers(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, batch_size=batch_size or 8, on_batch=on_batch)

    def next_token_logprobs(self, prompts, token_sets):
        return next_token_logprobs(self.model, self.tokenizer, prompts, token_sets, batch_size=8,
                                   device=self._device)

    def answer_losses(self, prompts, answers):
        return answer_losses(self.model, self.tokenizer, prompts, answers, batch_size=8, device=self._device)

    def close(self):
        self.model = None
