"""Exact behaviour of action tokenizers, the hybrid gate, guidance and the regression heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.heads.action_tokenizers import FastTokenizer, QuantileBinner, dct_matrix
from vlaforge.heads.base import guided
from vlaforge.heads.diffusion import DiffusionHead, DiffusionHeadConfig
from vlaforge.heads.hybrid import hybrid_gate
from vlaforge.types import ACTION, Context

RNG = np.random.default_rng(0)


def smooth_chunks(n: int, h: int = 8, d: int = 4) -> np.ndarray:
    """Chunks shaped like robot motion: a random smooth trajectory per dimension in [-1, 1]."""
    t = np.linspace(0, 1, h)[None, :, None]
    a, f, p = RNG.uniform(0.2, 0.8, (n, 1, d)), RNG.uniform(0.2, 1.5, (n, 1, d)), RNG.uniform(0, 6, (n, 1, d))
    return np.clip(a * np.sin(2 * np.pi * f * t + p) + RNG.normal(0, 0.01, (n, h, d)), -1, 1).astype(np.float32)


def test_dct_basis_is_orthonormal():
    d = dct_matrix(8)
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)


def test_fast_round_trip_error_is_bounded_by_the_quantization():
    chunks = smooth_chunks(500)
    tok = FastTokenizer(vocab=256, chunk=8, action_dim=4, scale=10.0)
    tok.fit(chunks)
    test = smooth_chunks(50)
    ids = tok.encode_chunks(test)
    assert all(s[-1] == tok.eos and max(s) < 256 for s in ids)
    back = np.stack([tok.decode_ids(s) for s in ids])
    # rounding each orthonormal DCT coefficient moves it by <= 0.5/scale, so per dimension the L2 error over the
    # chunk is <= sqrt(H) * 0.5 / scale, and so is every single value
    bound = np.sqrt(8) * 0.5 / 10.0
    assert np.abs(back - test).max() <= bound
    assert np.abs(back - test).mean() < 0.03
    assert np.mean([len(s) for s in ids]) < 8 * 4  # BPE compresses below one token per value
    state = tok.state()
    again = FastTokenizer(vocab=256, chunk=8, action_dim=4, scale=10.0)
    again.load_state(state)
    assert again.encode_chunks(test) == ids


def test_fast_decoding_tolerates_malformed_streams():
    tok = FastTokenizer(vocab=256, chunk=8, action_dim=4)
    tok.fit(smooth_chunks(200))
    assert tok.decode_ids([]).shape == (8, 4)
    assert tok.decode_ids([tok.eos, 3, 4]).shape == (8, 4)
    long = tok.encode_chunks(smooth_chunks(1))[0][:-1] * 3
    assert np.isfinite(tok.decode_ids(long)).all()


def test_fast_refuses_a_vocabulary_too_small_for_the_data():
    tok = FastTokenizer(vocab=8, chunk=8, action_dim=4, scale=100.0)
    with pytest.raises(ValueError, match="raise head.n_bins"):
        tok.fit(smooth_chunks(50))


def test_quantile_bins_hold_equal_mass_and_decode_within_half_a_bin():
    x = RNG.normal(0, 0.3, (20000, 3)).astype(np.float32)
    edges = torch.from_numpy(QuantileBinner.fit_edges(x, 16)).float()
    binner = QuantileBinner(lambda: edges)
    idx = binner.encode(torch.from_numpy(x))
    counts = np.stack([np.bincount(idx[:, d].numpy(), minlength=16) for d in range(3)])
    assert counts.min() > 0.8 * len(x) / 16 and counts.max() < 1.2 * len(x) / 16
    back = binner.decode(idx)
    half = ((edges[1:] - edges[:-1]) / 2)[idx, torch.arange(3)]
    assert ((back - torch.from_numpy(x)).abs() <= half + 1e-6).all()


def test_hybrid_gate_averages_when_confident_and_uses_diffusion_otherwise():
    ar = torch.tensor([[[0.2, 0.4, -0.6, 0.9]]]).repeat(2, 1, 1)
    diff = torch.tensor([[[0.0, 0.0, 0.0, 0.2]]]).repeat(2, 1, 1)
    confident = torch.full((256,), -10.0)
    confident[7] = 10.0  # softmax max-probability ~ 1
    unsure = torch.zeros(256)
    unsure[7] = 2.0  # max-probability ~ 0.03
    maxprob = lambda logits: logits.softmax(-1).max().item()  # noqa: E731
    conf = torch.tensor([maxprob(confident), maxprob(unsure)])[:, None, None].expand(2, 1, 4).clone()
    conf[1, 0, 3] = 1.0  # a confident gripper token alone must not tip the gate: gripper dims are excluded
    actions, averaged = hybrid_gate(ar, diff, conf, threshold=5.8 / 6, gripper_dims=(-1,))
    assert averaged.tolist() == [True, False]
    torch.testing.assert_close(actions[0, 0, :3], (ar[0, 0, :3] + diff[0, 0, :3]) / 2)
    assert actions[0, 0, 3].item() == 1.0  # averaged gripper 0.55 snapped to closed (+1)
    torch.testing.assert_close(actions[1], diff[1])


def test_guidance_combines_conditional_and_unconditional_predictions():
    x = torch.randn(3, 4, 2)
    fn = lambda z, drop: z * (1.0 if drop is None else 0.25)  # noqa: E731
    torch.testing.assert_close(guided(fn, x, 0.0), x)
    torch.testing.assert_close(guided(fn, x, 1.0), x)
    torch.testing.assert_close(guided(fn, x, 3.0), 0.25 * x + 3.0 * (x - 0.25 * x))


class ConstantNet(torch.nn.Module):
    """A denoiser that always outputs one fixed chunk, and records what it was asked."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out, self.seen = out, []

    def forward(self, x, t, cond):
        self.seen.append((x.clone(), t.clone()))
        return self.out.expand(x.shape[0], -1, -1)


@pytest.mark.parametrize(("kind", "loss"), [("epsilon", "mse"), ("sample", "mse"), ("sample", "l1"),
                                            ("v_prediction", "mse")])
def test_diffusion_prediction_types_train_on_their_own_target(kind, loss):
    """The loss compares the network's output with the noise, the clean chunk or alpha·eps − sigma·x0 (written here
    from the DDPM definitions over diffusers' squared-cosine alphas), and DDIM sampling reads it the same way."""
    torch.manual_seed(0)
    chunk, dim = 4, 3
    cfg = DiffusionHeadConfig(prediction_type=kind, loss=loss, repeated_diffusion_steps=1, num_steps=5)
    net = ConstantNet(torch.zeros(1, chunk, dim))
    head = DiffusionHead(cfg, dim, chunk, hidden_size=8, state_dim=0, network=net, cond_dim=8, memory=False)
    clean = torch.rand(2, chunk, dim) * 2 - 1
    ctx = Context(hidden=torch.zeros(2, 1, 8), mask=torch.ones(2, 1), pooled=torch.zeros(2, 8))
    torch.manual_seed(1)
    value = head.loss(ctx, {ACTION: clean})["loss"]
    torch.manual_seed(1)
    noise = torch.randn_like(clean)
    t = torch.randint(0, 100, (2,))
    abar = head.train_scheduler.alphas_cumprod[t][:, None, None]
    noisy = abar.sqrt() * clean + (1 - abar).sqrt() * noise
    torch.testing.assert_close(net.seen[0][0], noisy)  # the network saw x_t of the same draws
    goal = {"epsilon": noise, "sample": clean, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * clean}[kind]
    err = goal.abs() if loss == "l1" else goal**2
    torch.testing.assert_close(value, err.mean())  # the zero network's error is the goal itself
    # an oracle for the clean chunk: "sample" returns it exactly; the other kinds read the same output differently
    oracle = torch.tensor([[[0.5, -0.25, 0.75]] * chunk])
    net.out = oracle
    sampled = head.sample(ctx, {}, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, chunk, dim)
    assert torch.allclose(sampled, oracle.expand(2, -1, -1), atol=1e-5) == (kind == "sample")


def test_diffusion_sampling_from_zero_noise_is_deterministic():
    """init_noise scales the starting noise: at 0 every generator gives the same chunk, at 1 they differ."""
    torch.manual_seed(0)
    chunk, dim = 4, 3
    net = torch.nn.Linear(dim, dim)
    ctx = Context(hidden=torch.zeros(2, 1, 8), mask=torch.ones(2, 1), pooled=torch.zeros(2, 8))

    def draws(init_noise):
        cfg = DiffusionHeadConfig(prediction_type="sample", num_steps=4, init_noise=init_noise)
        head = DiffusionHead(cfg, dim, chunk, hidden_size=8, state_dim=0,
                             network=lambda x, t, cond: torch.tanh(net(x)), cond_dim=8, memory=False)
        return [head.sample(ctx, {}, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]

    a, b = draws(0.0)
    torch.testing.assert_close(a, b)
    a, b = draws(1.0)
    assert not torch.allclose(a, b)


def test_beta_timesteps_favour_the_noisy_end():
    """timesteps="beta": t/T ~ Beta(1.5, 1) (mean 0.6, P(t/T < 0.5) = 0.5^1.5), integers in [0, T)."""
    from vlaforge.heads.diffusion import training_timesteps

    torch.manual_seed(0)
    t = training_timesteps(DiffusionHeadConfig(timesteps="beta"), 40000, torch.device("cpu"))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 99
    assert abs((t.float() + 0.5).mean().item() / 100 - 0.6) < 0.01
    assert abs((t < 50).float().mean().item() - 0.5**1.5) < 0.01
    uniform = training_timesteps(DiffusionHeadConfig(), 40000, torch.device("cpu"))
    assert abs((uniform < 50).float().mean().item() - 0.5) < 0.01
