"""dqf.lm.generate_answers' own greedy loop: same tokens as transformers' generate, finished rows leave, groups optimal."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import dqf  # noqa: E402
from dqf.lm import generate as gen  # noqa: E402

POOL = Path(__file__).resolve().parents[3] / "examples" / "data" / "alpaca_2k.jsonl"


def prompts_for(tok, n: int, start: int = 0) -> list[list[int]]:
    rows = [json.loads(line) for line in POOL.read_text(encoding="utf-8").splitlines()[start:start + n]]
    return [gen.prompt_ids(tok, r["instruction"], r["input"], "alpaca") for r in rows]


def load(path, inference=False):
    ref = dqf.lm.resolve_model(str(path))
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    model = dqf.lm.load_model(ref, "AutoModelForCausalLM", inference=inference)
    torch.manual_seed(0)
    with torch.no_grad():  # the random init echoes one token whatever the prompt; larger weights vary answers
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.3)
    return model, tok


def transformers_greedy(model, tok, prompt: list[int], max_new_tokens: int) -> tuple[str, int]:
    """transformers' own greedy generate on one unpadded prompt: the reference answer and its token count."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           pad_token_id=tok.pad_token_id, eos_token_id=model.generation_config.eos_token_id)
    with torch.inference_mode():
        seq = model.generate(input_ids=torch.tensor([prompt]), generation_config=cfg)[0, len(prompt):]
    return tok.decode(seq, skip_special_tokens=True).strip(), len(seq)


@pytest.fixture(scope="module")
def llama_with_early_stops(tiny_models):
    """The tiny Llama with an eos its greedy answers actually emit mid-way, so rows end at different steps."""
    model, tok = load(tiny_models["llama"])
    prompts = prompts_for(tok, 12)
    assert gen._plain_kv_cache(model)
    firsts = []
    with torch.inference_mode():
        for p in prompts:
            seq = model.generate(input_ids=torch.tensor([p]), max_new_tokens=10, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=None)[0, len(p):].tolist()
            firsts.append(seq)
    # a token some answers produce after a few steps but not all: those answers stop early, others run on
    counts = {t: sum(t in s[2:8] for s in firsts) for s in firsts for t in s[2:8]}
    eos = min(counts, key=lambda t: abs(counts[t] - len(prompts) / 2))
    model.generation_config.eos_token_id = eos
    return model, tok, prompts


def test_own_loop_gives_transformers_greedy_tokens_while_rows_end_at_different_steps(llama_with_early_stops):
    model, tok, prompts = llama_with_early_stops
    want = [transformers_greedy(model, tok, p, 10) for p in prompts]
    lengths = {n for _, n in want}
    assert min(lengths) < 10 and max(lengths) == 10  # some rows stop early, some run to the limit
    got = gen.generate_answers(model, tok, prompts, max_new_tokens=10, batch_size=5)
    assert got == [text for text, _ in want]


def test_own_loop_with_onednn_linears_and_one_token_prompts(tiny_models):
    model, tok = load(tiny_models["llama"], inference=False)
    dqf.lm.onednn_linears(model)  # after re-drawing the weights, as the probe swaps after training
    prompts = prompts_for(tok, 5, start=20) + [[tok.bos_token_id], [tok.bos_token_id]]
    got = gen.generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=7)
    want = [transformers_greedy(model, tok, p, 6)[0] for p in prompts]
    assert got == want and len(set(got)) >= 4


def test_sliding_window_models_use_transformers_generate(tmp_path):
    import tiny_models as tm
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    vocab = tm.MODELS.vocab
    cfg = MistralConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=8,
                        pad_token_id=vocab.index("[PAD]"), eos_token_id=vocab.index("</s>"))
    tm.MODELS._save(MistralForCausalLM(cfg), tmp_path, chat=True)
    model, tok = load(tmp_path)
    assert not gen._plain_kv_cache(model)  # its cache forgets old tokens: the own loop would not
    prompts = prompts_for(tok, 4)
    got = gen.generate_answers(model, tok, prompts, max_new_tokens=5, batch_size=4)
    assert got == [transformers_greedy(model, tok, p, 5)[0] for p in prompts]


def test_prefill_groups_are_optimal():
    rng = random.Random(0)
    for _ in range(40):
        lengths = sorted((rng.randint(1, 60) for _ in range(rng.randint(1, 7))), reverse=True)
        cost = rng.choice([0, 8, 32])

        def total(runs):
            return sum(lengths[a] * (b - a) + cost for a, b in runs)

        runs = gen.prefill_groups(lengths, cost)
        assert [a for a, _ in runs][0] == 0 and runs[-1][1] == len(lengths)
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(runs, runs[1:]))
        best = min(total(list(zip((0,) + cuts, cuts + (len(lengths),))))
                   for k in range(len(lengths))
                   for cuts in itertools.combinations(range(1, len(lengths)), k))
        assert total(runs) == best


def test_prefill_groups_split_only_when_padding_outweighs_a_call():
    assert gen.prefill_groups([79, 78, 77, 76], call_cost=32) == [(0, 4)]
    assert gen.prefill_groups([79, 78, 35, 34], call_cost=32) == [(0, 2), (2, 4)]
