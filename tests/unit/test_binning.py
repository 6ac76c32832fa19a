from __future__ import annotations

import torch

from vlaforge.heads.tokens import UniformBinner


def test_encode_decode_error_at_most_half_a_bin():
    b = UniformBinner(256, -1.0, 1.0)
    x = torch.linspace(-1, 1, 10001)
    err = (b.decode(b.encode(x)) - x).abs().max().item()
    assert err <= b.width / 2 + 1e-6
    assert b.encode(x).min() == 0 and b.encode(x).max() == 255


def test_out_of_range_values_clip_to_the_end_bins():
    b = UniformBinner(256)
    idx = b.encode(torch.tensor([-5.0, -1.0001, 1.0001, 7.0]))
    assert idx.tolist() == [0, 0, 255, 255]
    assert b.decode(idx)[0].item() == -1 + b.width / 2


def test_bin_count_and_range_are_configurable():
    b = UniformBinner(8, 0.0, 2.0)
    assert b.encode(torch.tensor([0.0, 0.26, 1.99])).tolist() == [0, 1, 7]
