"""dqf.lm's fine-tuning and generation on a tiny real Llama: training examples, LoRA and full fine-tuning that
lower the loss and save atomically, batched generation equal to one prompt at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dqf.lm
from dqf import DqfError
from dqf.lm import finetune as ft
from dqf.lm import generate as gen

POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pool_rows(n: int, start: int = 0) -> list[dict]:
    lines = POOL.read_text(encoding="utf-8").splitlines()[start:start + n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return str(tiny_models["llama"])


def load(path: str, **kw):
    ref = dqf.lm.resolve_model(path)
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    return dqf.lm.load_model(ref, "AutoModelForCausalLM", **kw), tok


def examples(tok, rows, template="alpaca", max_length=128):
    out = [ft.training_example(gen.prompt_ids(tok, r["instruction"], r["input"], template),
                           gen.response_ids(tok, r["instruction"], r["input"], r["output"], template, tok.eos_token_id),
                           max_length) for r in rows]
    assert all(e is not None for e in out)
    return out


# -- prompts and training examples -----------------------------------------------------------------------

def test_alpaca_prompt_and_labels_cover_only_the_response(llama):
    _, tok = load(llama)
    assert gen.prompt_text(tok, "Add 2 and 3.", "", "alpaca").startswith(
        "Below is an instruction that describes a task. Write a response")
    with_input = gen.prompt_text(tok, "Add the numbers.", "2 and 3", "alpaca")
    assert "paired with an input" in with_input and with_input.endswith("### Input:\n2 and 3\n\n### Response:")
    prompt = gen.prompt_ids(tok, "Add the numbers.", "2 and 3", "alpaca")
    response = gen.response_ids(tok, "Add the numbers.", "2 and 3", "The sum is 5.", "alpaca", tok.eos_token_id)
    assert response[-1] == tok.eos_token_id
    ex = ft.training_example(prompt, response, max_length=512)
    assert ex.input_ids == prompt + response
    assert ex.labels == [ft.IGNORE_INDEX] * len(prompt) + response
    cut = ft.training_example(prompt, response, max_length=len(prompt) + 2)
    assert cut.labels[len(prompt):] == response[:2]
    assert ft.training_example(prompt, response, max_length=len(prompt)) is None  # no response token left


def test_chat_template_response_ends_with_the_templates_end_marker(llama):
    _, tok = load(llama)
    text = gen.prompt_text(tok, "say hi", "", "chat")
    assert text == "<s> user : say hi </s> <s> assistant : "
    response = gen.response_ids(tok, "say hi", "", "the answer", "chat", tok.eos_token_id)
    assert tok.convert_ids_to_tokens(response) == ["the", "answer", "</s>"]


# -- fine-tuning ------------------------------------------------------------------------------------------

def test_lora_finetune_lowers_seed_loss_and_saved_adapter_reproduces_it(llama, tmp_path):
    model, tok = load(llama)
    ex = examples(tok, pool_rows(8))
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = ft.response_loss(model, ex, tok.pad_token_id)
    cfg = ft.TrainConfig(method="lora", learning_rate=3e-2, epochs=4, batch_size=4, warmup_ratio=0.0,
                         lora_target_modules=TARGETS, seed=1)
    peft_model = ft.add_lora(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters()) / 4
    result = ft.train_causal_lm(peft_model, ex, cfg, pad_id=tok.pad_token_id)
    after = ft.response_loss(peft_model, ex, tok.pad_token_id)
    assert result.steps == 8 and result.tokens > 0 and len(result.epoch_losses) == 4
    assert after < before - 0.05, (before, after)
    # Only the adapters moved: the base weights under them are untouched.
    base_now = peft_model.get_base_model().state_dict()
    assert all(bool((base_now[k] == v).all()) for k, v in base_state.items() if k in base_now)

    ft.save_trained(peft_model, tmp_path / "adapter", {"steps": result.steps})
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "adapter" / "train.json").read_text())["steps"] == 8
    fresh, _ = load(llama)
    reloaded = ft.load_adapter(fresh, tmp_path / "adapter")
    assert ft.response_loss(reloaded, ex, tok.pad_token_id) == pytest.approx(after, abs=1e-4)


def test_full_finetune_lowers_seed_loss_and_saved_weights_reproduce_it(llama, tmp_path):
    model, tok = load(llama)
    ex = examples(tok, pool_rows(8))
    before = ft.response_loss(model, ex, tok.pad_token_id)
    cfg = ft.TrainConfig(method="full", learning_rate=1e-2, epochs=2, batch_size=2, gradient_accumulation_steps=2,
                         warmup_ratio=0.1, seed=0)
    result = ft.train_causal_lm(model, ex, cfg, pad_id=tok.pad_token_id)
    after = ft.response_loss(model, ex, tok.pad_token_id)
    assert result.steps == 4  # 4 micro-batches per epoch, 2 per optimizer step, 2 epochs
    assert after < before - 0.5, (before, after)
    ft.save_trained(model, tmp_path / "full", {})
    reloaded = dqf.lm.load_model(dqf.lm.resolve_model(str(tmp_path / "full")), "AutoModelForCausalLM")
    assert ft.response_loss(reloaded, ex, tok.pad_token_id) == pytest.approx(after, abs=1e-4)


def test_max_train_steps_caps_training(llama):
    model, tok = load(llama)
    cfg = ft.TrainConfig(method="full", epochs=5, batch_size=2, max_steps=3)
    assert ft.train_causal_lm(model, examples(tok, pool_rows(8)), cfg, pad_id=tok.pad_token_id).steps == 3


def test_unknown_lora_target_names_the_models_linear_layers(llama):
    model, _ = load(llama)
    with pytest.raises(DqfError, match="lora_target_modules.*q_proj"):
        ft.add_lora(model, ft.TrainConfig(lora_target_modules=("c_attn",)))


# -- generation -------------------------------------------------------------------------------------------

def scrambled(model):
    """The tiny model with its projections re-drawn large: its random init echoes ':' whatever the prompt."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_left_padded_generation_equals_one_prompt_at_a_time(llama, num_beams):
    model, tok = load(llama)
    scrambled(model)
    rows = pool_rows(10)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in rows]
    assert len({len(p) for p in prompts}) >= 5  # real padding happens inside each batch
    batched = gen.generate_answers(model, tok, prompts, max_new_tokens=8, num_beams=num_beams, batch_size=4)
    single = [gen.generate_answers(model, tok, [p], max_new_tokens=8, num_beams=num_beams, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(t for t in batched) and len(set(batched)) >= 8  # answers depend on the prompt


def test_generate_reports_each_batch_in_length_order(llama):
    model, tok = load(llama)
    prompts = [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in pool_rows(5)]
    seen = []
    out = gen.generate_answers(model, tok, prompts, max_new_tokens=3, batch_size=2, on_batch=lambda pos, t: seen.append(pos))
    assert sorted(p for batch in seen for p in batch) == list(range(5))
    lengths = [len(prompts[p]) for batch in seen for p in batch]
    assert lengths == sorted(lengths, reverse=True)
    assert len(out) == 5 and all(isinstance(t, str) for t in out)


def test_truncate_left_keeps_the_response_marker():
    assert gen.truncate_left([1, 2, 3, 4], 2) == ([3, 4], True)
    assert gen.truncate_left([1, 2], 5) == ([1, 2], False)
    assert gen.truncate_left([1, 2], None) == ([1, 2], False)



def test_save_trained_is_atomic_and_replaces_an_incomplete_folder(llama, tmp_path):
    model, _ = load(llama)
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.bin").write_text("left by a killed run of an older dqf")  # no train.json: incomplete

    class Boom(Exception):
        pass

    def failing_save(path, **kw):
        (Path(path) / "half.bin").write_text("x")
        raise Boom

    broken = type("Broken", (), {"save_pretrained": staticmethod(failing_save)})()
    with pytest.raises(Boom):
        ft.save_trained(broken, target, {"steps": 1})
    assert sorted(p.name for p in target.iterdir()) == ["stale.bin"]  # the failed save left nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and no temporary folder
    ft.save_trained(model, target, {"steps": 2})
    assert not (target / "stale.bin").exists() and json.loads((target / "train.json").read_text()) == {"steps": 2}
    assert (target / "config.json").exists()
