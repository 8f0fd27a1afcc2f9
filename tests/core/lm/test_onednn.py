"""dqf.lm.onednn_linears: oneDNN Linear layers give nn.Linear's numbers, fall back when they must, and can be turned off."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import dqf  # noqa: E402
from dqf.lm import generate as gen  # noqa: E402
from dqf.lm import onednn_linears  # noqa: E402
from dqf.lm.onednn import onednn_available  # noqa: E402


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32, bias=False),
                               torch.nn.Sequential(torch.nn.Linear(32, 1))).to(dtype).eval()


def test_this_cpu_build_has_onednn():
    # CI and users' x86 CPU wheels ship mkldnn; if this fails the fast path silently does nothing there.
    assert onednn_available()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_same_numbers_as_nn_linear_and_every_linear_swapped(dtype, tol):
    ref = mlp(dtype=dtype)
    model = mlp(dtype=dtype)
    assert onednn_linears(model) == 3
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    x = torch.randn(5, 9, 64, dtype=dtype)
    with torch.inference_mode():
        want, got = ref(x), model(x)
    assert got.dtype == dtype and got.shape == want.shape
    rel = ((got.float() - want.float()).norm() / want.float().norm()).item()
    assert rel < tol


@pytest.mark.parametrize("pack", [True, False])
def test_packed_and_unpacked_weights_give_the_same_numbers(pack):
    ref, model = mlp(5), mlp(5)
    onednn_linears(model, pack=pack)
    assert all((m._packed is not None) == pack for m in model.modules() if type(m).__name__ == "OneDnnLinear")
    x = torch.randn(16, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_packs_only_when_the_copies_fit_in_a_quarter_of_available_memory(monkeypatch):
    from dqf.lm import onednn

    weights = 64 * 128 * 4 + 128 * 32 * 4 + 32 * 1 * 4  # the three layers' float32 weights
    monkeypatch.setattr(onednn, "available_memory", lambda: 4 * weights)
    model = mlp(6)
    onednn_linears(model)
    assert model[0]._packed is not None
    monkeypatch.setattr(onednn, "available_memory", lambda: 4 * weights - 4)
    model = mlp(6)
    onednn_linears(model)
    assert model[0]._packed is None


def test_available_memory_is_read():
    from dqf.lm.onednn import available_memory

    free = available_memory()
    assert free is None or 0 < free < 1 << 50


def test_skip_and_weights_kept_for_code_that_reads_them():
    model = mlp(1)
    w = model[0].weight
    assert onednn_linears(model, skip=("3.",)) == 2
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if "Linear" in type(m).__name__}
    assert kinds == {"0": "OneDnnLinear", "2": "OneDnnLinear", "3.0": "Linear"}
    assert model[0].weight is w and model[0].in_features == 64 and model[0].out_features == 128


def test_training_falls_back_to_autograd():
    model = mlp(2)
    onednn_linears(model)
    x = torch.randn(4, 64)
    model(x).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_moved_or_cast_weights_are_not_served_stale():
    ref = mlp(3).double()
    model = mlp(3)
    onednn_linears(model)
    model.double()  # new storage: the float32 packed copy no longer describes the weights
    x = torch.randn(3, 64, dtype=torch.float64)
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("DQF_ONEDNN", "0")
    model = mlp(4)
    assert onednn_linears(model) == 0
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 3


def test_load_model_inference_swaps_and_keeps_a_real_models_outputs(tiny_models):
    ref = dqf.lm.resolve_model(str(tiny_models["bert"]))
    plain = dqf.lm.load_model(ref, "AutoModel")
    fast = dqf.lm.load_model(ref, "AutoModel", inference=True)
    assert not any(type(m) is torch.nn.Linear for m in fast.modules())
    ids = torch.randint(5, 30, (3, 12))
    with torch.inference_mode():
        a = plain(input_ids=ids).last_hidden_state
        b = fast(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_greedy_answers_unchanged_on_a_real_causal_lm(tiny_models, tmp_path):
    ref = dqf.lm.resolve_model(str(tiny_models["llama"]))
    tok = dqf.lm.load_tokenizer(ref)
    gen.prepare_tokenizer(tok)
    prompts = [gen.prompt_ids(tok, f"say {w} please", "", "alpaca") for w in ("one", "two three", "four five six")]
    plain = dqf.lm.load_model(ref, "AutoModelForCausalLM")
    fast = dqf.lm.load_model(ref, "AutoModelForCausalLM", inference=True)
    # logits agree to rounding; greedy picks then agree unless two logits tie to ~1e-6
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        la, lb = plain(input_ids=ids).logits, fast(input_ids=ids).logits
    assert torch.allclose(la, lb, atol=1e-5, rtol=1e-4)
    want = gen.generate_answers(plain, tok, prompts, max_new_tokens=8, batch_size=3)
    got = gen.generate_answers(fast, tok, prompts, max_new_tokens=8, batch_size=3)
    assert got == want
