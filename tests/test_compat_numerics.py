"""Numerics of the ``adm.compat.guided_diffusion`` drop-in that third-party code depends on.

1. Timestep samplers (``resample``): OpenAI's samplers draw from numpy's GLOBAL generator,
   ``np.random.choice(T, size=(B,), p=p)`` with ``p = weights / weights.sum()`` and importance weights
   ``1 / (T * p[t])``. Scripts that seed numpy (P2-weighting's ``image_train.py``) must get the same
   timesteps and weights from ours, and numpy's global state must move on exactly as it does there.
2. Half-precision networks (``convert_to_fp16``, as DDRM, DDNM, RePaint and Universal-Guided-Diffusion run
   OpenAI's classifier): the float16 trunk must round where OpenAI's rounds (scale-shift as two float16
   ops; attention with q and k scaled by ``ch ** -0.25`` in float16, the softmax in float32 cast back) and
   the float32 attention-pool head must follow OpenAI's order, else fp16 rounding flips move the logits by
   ~4e-4 and guidance gradients by ~5e-3 relative.

The block tests compare with float16 computations spelled out here. ``data/compat_fp16_classifier.pt``
(7 KB) holds OpenAI's own fp16 logits and guidance gradient for a tiny classifier whose weights the test
rebuilds from a seed; it was written once by ``python tests/test_compat_numerics.py PATH_TO_CHECKOUT``
(openai/guided-diffusion at 22e0df8, torch 2.14.1 on x86-64 with AVX-512, one thread; see
``_write_reference``). Float16 kernels differ between CPU backends, so the file also holds a canary (a few
float16 convolutions and matrix products on seeded inputs): where this machine's canary differs from the
stored one, its float16 arithmetic is not the one the file was made with and the end-to-end comparison is
skipped (the block tests still run).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adm.compat import models as compat
from adm.compat.guided_diffusion import resample
from adm.compat.guided_diffusion.script_util import create_gaussian_diffusion
from adm.nn.attention import AttentionBlock, AttentionPool2d
from adm.nn.layers import ResBlock

REFERENCE = Path(__file__).parent / "data" / "compat_fp16_classifier.pt"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


# ---------------------------------------------------------------------------------------------------------
# 1. Timestep samplers draw from numpy's global generator
# ---------------------------------------------------------------------------------------------------------


def _numpy_draw(p: np.ndarray, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """OpenAI's documented draw, spelled out: the steps, their float32 weights, numpy's state after."""
    np.random.seed(seed)
    p = p / np.sum(p)
    t = np.random.choice(len(p), size=(batch,), p=p)
    weights = (1 / (len(p) * p[t])).astype(np.float32)
    return t, weights, np.random.get_state()


def _ours(sampler, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    np.random.seed(seed)
    t, w = sampler.sample(batch, "cpu")
    return t, w, np.random.get_state()


@pytest.mark.parametrize("seed", [0, 1234])
def test_uniform_sampler_draws_with_numpys_global_generator(seed):
    diffusion = create_gaussian_diffusion(steps=50)
    sampler = resample.create_named_schedule_sampler("uniform", diffusion)
    t_np, w_np, state_np = _numpy_draw(np.ones(50), 13, seed)
    t, w, state = _ours(sampler, 13, seed)
    assert t.dtype == torch.int64 and w.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), t_np)
    np.testing.assert_array_equal(w.numpy(), w_np)
    assert _same_state(state, state_np)  # numpy's generator moved on exactly as after OpenAI's draw
    # The next draws of the script (e.g. its own np.random calls) are then the same too.
    np.random.seed(seed)
    sampler.sample(13, "cpu")
    after_ours = np.random.rand(4)
    np.random.seed(seed)
    np.random.choice(50, size=(13,), p=np.ones(50) / 50)
    np.testing.assert_array_equal(after_ours, np.random.rand(4))


def test_loss_second_moment_sampler_warm_up_and_importance_draws():
    steps, history, uniform_prob = 20, 3, 0.001
    diffusion = create_gaussian_diffusion(steps=steps)
    sampler = resample.LossSecondMomentResampler(diffusion, history_per_term=history)
    rng = np.random.default_rng(5)
    recorded: dict[int, list[float]] = {t: [] for t in range(steps)}

    def feed(ts: list[int]) -> None:
        losses = rng.uniform(0.1, 2.0, size=len(ts)).tolist()
        for t, loss in zip(ts, losses):
            recorded[t].append(loss)
        sampler.update_with_local_losses(torch.tensor(ts), torch.tensor(losses, dtype=torch.float64))

    # Warm-up: uniform weights (and uniform draws) until every step holds `history` losses.
    for _ in range(history):
        feed(list(range(steps - 1)))
    feed([5, 5, 6])  # more than `history` for some steps: only the last `history` count
    assert not sampler._warmed_up()
    for seed in (3, 4):
        t_np, w_np, state_np = _numpy_draw(np.ones(steps), 9, seed)
        t, w, state = _ours(sampler, 9, seed)
        np.testing.assert_array_equal(t.numpy(), t_np)
        np.testing.assert_array_equal(w.numpy(), w_np)
        assert _same_state(state, state_np)

    for _ in range(history):
        feed([steps - 1])
    assert sampler._warmed_up()
    # p by hand: sqrt of the mean squared loss over each step's last `history` losses, normalised, with a
    # `uniform_prob` share spread evenly.
    last = np.array([recorded[t][-history:] for t in range(steps)])
    p = np.sqrt(np.mean(last**2, axis=-1))
    p /= np.sum(p)
    p *= 1 - uniform_prob
    p += uniform_prob / steps
    np.testing.assert_array_equal(sampler.weights(), p)
    for seed in (3, 4, 99):
        t_np, w_np, state_np = _numpy_draw(p, 64, seed)
        t, w, state = _ours(sampler, 64, seed)
        np.testing.assert_array_equal(t.numpy(), t_np)
        np.testing.assert_array_equal(w.numpy(), w_np)
        assert _same_state(state, state_np)
    assert len(set(w.tolist())) > 1  # importance weights, not all ones


def test_local_losses_gathered_through_a_process_group(tmp_path):
    """With a process group up, ``update_with_local_losses`` gathers (sizes first, as ranks may differ)."""
    import torch.distributed as dist

    diffusion = create_gaussian_diffusion(steps=4, noise_schedule="cosine")
    gathered = resample.LossSecondMomentResampler(diffusion, history_per_term=2)
    direct = resample.LossSecondMomentResampler(diffusion, history_per_term=2)
    ts, losses = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 2]), torch.linspace(0.5, 1.3, 9)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        gathered.update_with_local_losses(ts, losses)
    finally:
        dist.destroy_process_group()
    direct.update_with_all_losses(ts.tolist(), losses.tolist())
    np.testing.assert_array_equal(gathered._loss_history, direct._loss_history)
    np.testing.assert_array_equal(gathered._loss_counts, [2, 2, 2, 2])
    assert gathered._warmed_up()


def test_schedule_sampler_subclass_weights_drive_the_draw():
    """OpenAI's ScheduleSampler is abstract over ``weights()``: a user's subclass sets the distribution."""

    class FirstHalf(resample.ScheduleSampler):
        def weights(self):
            return np.r_[np.ones(5), np.zeros(5)]

    t, w, _ = _ours(FirstHalf(), 32, 7)
    t_np, w_np, _ = _numpy_draw(np.r_[np.ones(5), np.zeros(5)], 32, 7)
    np.testing.assert_array_equal(t.numpy(), t_np)
    np.testing.assert_array_equal(w.numpy(), w_np)
    assert t.max() < 5


# ---------------------------------------------------------------------------------------------------------
# 2. float16 trunks round where OpenAI's do
# ---------------------------------------------------------------------------------------------------------


def _fill(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for every parameter (zero-initialised layers included), in key order.

    >= 2-D tensors: randn / sqrt(fan_in); 1-D ``*.weight`` (GroupNorm): 1 + 0.1 randn; other 1-D: 0.1 randn.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=g)
        if value.dim() >= 2:
            state[name] = noise / math.sqrt(value[0].numel())
        elif name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        else:
            state[name] = 0.1 * noise
    module.load_state_dict(state)
    return state


def _attention_fp16_reference(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """OpenAI's float16 attention, head by head: q, k scaled by ch**-0.25 and rounded, product rounded,
    softmax in float32 rounded to float16, then the product with v."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    scale = 1 / math.sqrt(math.sqrt(ch))
    outs = []
    for h in range(heads):
        if legacy:  # channels [heads, 3, ch]
            q, k, v = (qkv[:, (3 * h + i) * ch : (3 * h + i + 1) * ch] for i in range(3))
        else:  # channels [3, heads, ch]
            q, k, v = (qkv[:, (i * heads + h) * ch : (i * heads + h + 1) * ch] for i in range(3))
        logits = torch.matmul((q * scale).transpose(1, 2), k * scale)  # (B, Lq, Lk) float16
        weights = torch.softmax(logits.float(), dim=-1).to(torch.float16)
        outs.append(torch.matmul(v, weights.transpose(1, 2)))  # (B, ch, Lq)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("legacy", [True, False])
def test_fp16_attention_block_follows_openais_float16_order(one_thread, legacy):
    block = AttentionBlock(64, num_head_channels=32, use_new_attention_order=not legacy).eval()
    _fill(block, 1)
    block.qkv.half()
    block.proj_out.half()
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(2)).half()
    with torch.no_grad():
        flat = x.reshape(2, 64, -1)
        normed = F.group_norm(flat.float(), 32, block.norm.weight, block.norm.bias, 1e-5).half()
        qkv = F.conv1d(normed, block.qkv.weight, block.qkv.bias)
        h = F.conv1d(_attention_fp16_reference(qkv, 2, legacy), block.proj_out.weight, block.proj_out.bias)
        expected = (flat + h).reshape(x.shape)
        out = block(x)
    assert out.dtype == torch.float16
    assert _rel(out, expected) < 1e-6, _rel(out, expected)  # bit-exact here; one fp16 flip is ~1e-4


@pytest.mark.parametrize("use_scale_shift_norm", [True, False])
def test_fp16_resblock_follows_openais_float16_order(one_thread, use_scale_shift_norm):
    block = ResBlock(32, 128, 0.0, 64, use_scale_shift_norm=use_scale_shift_norm, down=True).eval()
    _fill(block, 3)
    for conv in (block.in_layers[2], block.out_layers[3], block.skip_connection):
        conv.half()
    g = torch.Generator().manual_seed(4)
    x, emb = torch.randn(2, 32, 16, 16, generator=g).half(), torch.randn(2, 128, generator=g)

    def norm(layer, h):  # GroupNorm in float32, cast back to float16
        return F.group_norm(h.float(), 32, layer.weight, layer.bias, 1e-5).half()

    with torch.no_grad():
        h = F.silu(norm(block.in_layers[0], x))
        h, skip_in = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = block.in_layers[2](h)
        emb_out = block.emb_layers(emb).half()[:, :, None, None]
        if use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm(block.out_layers[0], h) * (1 + scale) + shift  # two float16 roundings
        else:
            h = norm(block.out_layers[0], h + emb_out)
        h = block.out_layers[3](F.silu(h))
        expected = block.skip_connection(skip_in) + h
        out = block(x, emb)
    assert out.dtype == torch.float16
    assert _rel(out, expected) < 1e-6, _rel(out, expected)


def test_attention_pool_openai_order_and_its_switch(one_thread):
    pool = AttentionPool2d(4, 64, 32, 10).eval()
    _fill(pool, 5)
    x = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        fast = pool(x)
        tokens = x.reshape(3, 64, -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1) + pool.positional_embedding
        qkv = F.conv1d(tokens, pool.qkv_proj.weight, pool.qkv_proj.bias)
        ch = 32
        scale = 1 / math.sqrt(math.sqrt(ch))
        heads = []
        for h in range(2):
            q, k, v = (qkv[:, (i * 2 + h) * ch : (i * 2 + h + 1) * ch] for i in range(3))
            w = torch.softmax(torch.matmul((q * scale).transpose(1, 2), k * scale), dim=-1)
            heads.append(torch.matmul(v, w.transpose(1, 2)))
        expected = F.conv1d(torch.cat(heads, dim=1), pool.c_proj.weight, pool.c_proj.bias)[:, :, 0]
        pool.openai_order = True
        exact = pool(x)
    assert _rel(fast, expected) < 2e-6  # the default (one query, SDPA) path agrees to float32 rounding
    assert _rel(exact, expected) < 1e-7, _rel(exact, expected)  # OpenAI's order: bit-exact here


# The tiny classifier of the fp16 reference, in OpenAI's constructor arguments (ours and theirs alike).
_TINY_CLASSIFIER = dict(
    image_size=16,
    in_channels=3,
    model_channels=32,
    out_channels=10,
    num_res_blocks=1,
    attention_resolutions=[2],
    channel_mult=(1, 2),
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=True,
    pool="attention",
)


def _tiny_classifier(fp16: bool) -> compat.EncoderUNetModel:
    return compat.EncoderUNetModel(**_TINY_CLASSIFIER, use_fp16=fp16).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 800]), torch.tensor([1, 7])


def _logits_and_guidance(model, x, t, y) -> tuple[torch.Tensor, torch.Tensor]:
    """classifier_sample.py's cond_fn (scale 1): d/dx sum_i log_softmax(classifier(x, t))[i, y_i]."""
    with torch.no_grad():
        logits = model(x, t)
    x_in = x.detach().requires_grad_(True)
    selected = F.log_softmax(model(x_in, t), dim=-1)[torch.arange(len(y)), y]
    return logits, torch.autograd.grad(selected.sum(), x_in)[0]


def _canary() -> torch.Tensor:
    """float16 kernels the classifier uses (3x3 and strided convs, 1x1 conv1d, batched products)."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(1, 32, 4, 4, generator=g).half()
    w3 = (torch.randn(16, 32, 3, 3, generator=g) / 17).half()
    w1 = (torch.randn(16, 32, 1, generator=g) / 6).half()
    a, b = torch.randn(2, 8, 32, generator=g).half(), torch.randn(2, 32, 8, generator=g).half()
    parts = [
        F.conv2d(x, w3, padding=1),
        F.conv2d(x, w3, stride=2, padding=1),
        F.conv1d(x.reshape(1, 32, 16), w1),
        torch.einsum("nct,ncs->nts", b, b),
        torch.bmm(a, b),
    ]
    return torch.cat([part.flatten() for part in parts])


def test_fp16_classifier_matches_openais_fp16_run(one_thread):
    """Logits and guidance gradients of the fp16 classifier against OpenAI's fp16 run of the same network
    (same weights and inputs, stored once; before the fix they differed by ~4e-4 and ~4e-3 relative)."""
    ref = torch.load(REFERENCE, weights_only=True)
    model = _tiny_classifier(fp16=True)
    state = _fill(model, 10)
    checksum = torch.stack([v.double().square().sum() for v in state.values()])
    torch.testing.assert_close(checksum, ref["param_checksum"], rtol=1e-12, atol=0)
    logits32, grad32 = _logits_and_guidance(model, *_inputs())
    model.convert_to_fp16()
    logits, grad = _logits_and_guidance(model, *_inputs())
    # fp16 and fp32 of the same network differ by float16 rounding, wherever the kernels come from.
    assert _rel(logits, logits32) < 5e-3 and _rel(grad, grad32) < 5e-2
    if not torch.equal(_canary(), ref["canary"]):
        pytest.skip("this CPU's float16 kernels round differently from the machine that wrote the reference")
    assert _rel(logits, ref["fp16/logits"]) < 1e-6, _rel(logits, ref["fp16/logits"])
    assert _rel(grad, ref["fp16/grad"]) < 1e-5, _rel(grad, ref["fp16/grad"])


def test_convert_to_fp32_restores_the_float32_path(one_thread):
    model = _tiny_classifier(fp16=True)
    _fill(model, 10)
    model.convert_to_fp16()
    assert model.out[2].openai_order and model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    model.convert_to_fp32()  # the weights keep their float16 rounding, as with OpenAI's
    assert not model.out[2].openai_order
    fresh = _tiny_classifier(fp16=False)
    fresh.load_state_dict(model.state_dict())
    x, t, y = _inputs()
    for a, b in zip(_logits_and_guidance(model, x, t, y), _logits_and_guidance(fresh, x, t, y)):
        assert torch.equal(a, b)


def _write_reference(checkout: str) -> None:
    """Run OpenAI's classifier (fp32 and fp16) on the tiny network and store its outputs + the canary."""
    import types

    for name in ("mpi4py", "blobfile"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, checkout)
    from guided_diffusion.unet import EncoderUNetModel

    torch.set_num_threads(1)
    ours = _tiny_classifier(fp16=True)
    state = _fill(ours, 10)
    out: dict[str, torch.Tensor] = {
        "param_checksum": torch.stack([v.double().square().sum() for v in state.values()])
    }
    theirs = EncoderUNetModel(**_TINY_CLASSIFIER, use_fp16=True).eval()
    theirs.load_state_dict(state)
    theirs.convert_to_fp16()
    logits, grad = _logits_and_guidance(theirs, *_inputs())
    out["fp16/logits"], out["fp16/grad"] = logits.float(), grad.float()
    out["canary"] = _canary()
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, REFERENCE)
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")


if __name__ == "__main__":
    _write_reference(sys.argv[1])
