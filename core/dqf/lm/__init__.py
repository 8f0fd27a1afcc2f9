"""dqf.lm: the public language-model toolkit for plugins: find and load models, prompts, batching, losses,
next-token probabilities, generation, fine-tuning and CPU speed-ups.

Importing it loads no model library: torch and transformers are imported by the functions that need them.
"""

from __future__ import annotations

from dqf.lm.backends import (ModelSource, losses_from_prompt_logprobs, next_token_from_prompt_logprobs, off_process,
                             require_capabilities)
from dqf.lm.batching import MAX_PADDING, collate, forward_mode, length_batches, pad_token_id
from dqf.lm.finetune import (TrainConfig, TrainExample, TrainResult, add_lora, load_adapter, merged_for_inference,
                             response_loss, save_trained, train_causal_lm, training_example, training_examples)
from dqf.lm.generate import generate_answers, prepare_tokenizer, prompt_ids, prompt_text, response_ids, truncate_left
from dqf.lm.http import EndpointError, JsonClient, Reply, api_key, retry_after_seconds
from dqf.lm.losses import answer_losses
from dqf.lm.models import (ModelMixin, ModelRef, effective_max_length, files_identity, load_model, load_tokenizer,
                           one_line,
                           pick_device, pick_dtype, resolve_model, weights_folder)
from dqf.lm.next_token import answer_token_ids, fit_prompt, next_token_logprobs, single_token_ids
from dqf.lm.onednn import onednn_linears
from dqf.lm.prompts import (ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, alpaca_prompt, chat_answer, chat_prompt, encode,
                            encode_pair, plain_prompt, question, turn_pairs, vicuna_conversation)
from dqf.lm.quantize import quantize_int8
from dqf.lm.scorer import CausalLMOptions, CausalLMScorer, ModelScorer

__all__ = [
    # models
    "ModelRef", "ModelMixin", "resolve_model", "load_model", "load_tokenizer", "pick_device", "pick_dtype",
    "effective_max_length", "one_line", "weights_folder", "files_identity",
    # what a plugin hands its backend (dqf.Backend)
    "ModelSource", "require_capabilities", "off_process",
    "losses_from_prompt_logprobs", "next_token_from_prompt_logprobs",
    # scorers over a model
    "ModelScorer", "CausalLMScorer", "CausalLMOptions",
    # prompts
    "question", "alpaca_prompt", "plain_prompt", "chat_prompt", "chat_answer", "encode", "encode_pair", "vicuna_conversation", "turn_pairs",
    "ALPACA_PROMPT_INPUT", "ALPACA_PROMPT_NO_INPUT",
    # batching, losses, next-token probabilities
    "length_batches", "collate", "pad_token_id", "MAX_PADDING", "forward_mode", "answer_losses",
    "next_token_logprobs", "answer_token_ids", "single_token_ids", "fit_prompt",
    # generation
    "prepare_tokenizer", "prompt_text", "prompt_ids", "response_ids", "truncate_left", "generate_answers",
    # model servers over HTTP
    "JsonClient", "Reply", "EndpointError", "api_key", "retry_after_seconds",
    # fine-tuning
    "TrainConfig", "TrainExample", "TrainResult", "training_example", "training_examples", "add_lora",
    "train_causal_lm", "response_loss", "save_trained", "load_adapter", "merged_for_inference",
    # CPU speed-ups
    "quantize_int8", "onednn_linears",
]
