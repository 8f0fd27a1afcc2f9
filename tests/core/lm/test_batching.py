"""dqf.lm's batching: length-sorted groups that cover every row once, stay within size and padding, and pad right."""

from __future__ import annotations

import random

import pytest

from dqf.lm import MAX_PADDING, collate, length_batches, pad_token_id


def _check_groups(groups, lengths, batch_size):
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert all(1 <= len(g) <= batch_size for g in groups)


def test_length_batches_sort_by_length_and_respect_the_size():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(203)]
    groups = length_batches(lengths, 16)
    _check_groups(groups, lengths, 16)
    ordered = [lengths[i] for g in groups for i in g]
    assert ordered == sorted(lengths)
    assert [len(g) for g in groups[:-1]] == [16] * (len(groups) - 1)  # no padding cap: only the last is short
    longest_first = length_batches(lengths, 16, descending=True)
    assert lengths[longest_first[0][0]] == max(lengths)


def test_max_padding_closes_a_batch_before_it_carries_too_much_padding():
    rng = random.Random(1)
    lengths = [rng.choice([5, 6, 7, 40, 41, 400]) for _ in range(120)]
    groups = length_batches(lengths, 32, max_padding=MAX_PADDING)
    _check_groups(groups, lengths, 32)
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= (1 + MAX_PADDING) * real
    assert len(groups) > len(length_batches(lengths, 32))  # the cap did split groups


def test_equal_lengths_fill_whole_batches_and_ties_keep_input_order():
    assert length_batches([3] * 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert length_batches([], 4) == []


def test_collate_pads_right_or_left_and_masks_padding():
    import torch

    rows = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 1, 1]}, {"input_ids": [8], "token_type_ids": [1]},
            {"input_ids": [], "token_type_ids": []}]
    right = collate(rows, pad_id=9)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9], [9, 9, 9]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert right["token_type_ids"].tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]  # other keys pad with 0
    left = collate(rows, pad_id=9, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert right["input_ids"].dtype == torch.long


@pytest.mark.parametrize("pad,eos,expected", [(3, 7, 3), (None, 7, 7), (None, None, 0), (0, 7, 0)])
def test_pad_token_id_falls_back_to_eos_then_zero(pad, eos, expected):
    tok = type("Tok", (), {"pad_token_id": pad, "eos_token_id": eos})()
    assert pad_token_id(tok) == expected


def test_forward_mode_keeps_cuda_attention_off_cudnn_inside_the_block_only():
    import torch

    from dqf.lm import forward_mode

    before = torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()
    with forward_mode(torch.device("cuda")):
        assert torch.is_inference_mode_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()) == before
    with forward_mode("cpu"):
        assert torch.is_inference_mode_enabled() and torch.backends.cuda.cudnn_sdp_enabled() == before[0]
    with forward_mode(torch.device("cpu"), grad=True):
        assert not torch.is_inference_mode_enabled()
