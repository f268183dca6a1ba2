"""The fast paths of the networks give the numbers of the plain formulation.

Attention runs on tokens through the fused ``scaled_dot_product_attention`` kernel, ResBlocks apply SiLU and
the residual add in place when autograd does not need the inputs, and the classifier's attention pool
computes only the query it keeps. Each is compared here with the formulation of the reference code (and of
the previous channel-layout path), forward and backward; the golden tests check whole networks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from adm.nn import AttentionBlock, ResBlock, qkv_attention
from adm.nn.attention import AttentionPool2d, token_attention


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def reference_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """(B, 3 * heads * ch, L) -> (B, heads * ch, L): q and k scaled by ch**-0.25 each, fp32 softmax."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = ch**-0.25
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    return torch.einsum("bts,bcs->bct", weight.to(v.dtype), v).reshape(b, -1, length)


def channel_layout_sdpa(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """The previous path: SDPA on (B, heads, L, ch) transposed views of the channel layout."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    shape = (b, heads, 3, ch, length) if legacy else (b, 3, heads, ch, length)
    q, k, v = qkv.reshape(shape).unbind(dim=2 if legacy else 1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, heads * ch, length)


def reference_block(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    qkv = F.conv1d(block.norm(flat), block.qkv.weight, block.qkv.bias)
    h = reference_attention(qkv, block.num_heads, block.legacy)
    return (flat + F.conv1d(h, block.proj_out.weight, block.proj_out.bias)).reshape(x.shape)


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in) * (1.0 if p.ndim > 1 else 0.1))
    return module


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("heads", [1, 3, 5])
def test_token_attention_matches_reference_and_previous_path(legacy, heads):
    torch.manual_seed(heads)
    qkv = torch.randn(2, 3 * heads * 8, 37) * 3
    ref = reference_attention(qkv, heads, legacy)
    for ours in (qkv_attention(qkv, heads, legacy), token_attention(qkv.transpose(1, 2), heads, legacy)):
        ours = ours if ours.shape == ref.shape else ours.transpose(1, 2)
        assert rel(ours, ref) < 1e-6
        assert rel(ours, channel_layout_sdpa(qkv, heads, legacy)) < 1e-6
    if heads > 1:  # the two layouts really differ
        assert rel(qkv_attention(qkv, heads, legacy), reference_attention(qkv, heads, not legacy)) > 1e-2


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("channels,head_channels", [(96, 32), (64, 64), (160, 32)])
def test_attention_block_forward_and_grads_match_reference(legacy, channels, head_channels):
    block = _randomise(
        AttentionBlock(channels, num_head_channels=head_channels, use_new_attention_order=not legacy)
    )
    x = torch.randn(2, channels, 6, 5, requires_grad=True)
    out = block(x)
    with torch.no_grad():
        assert rel(block(x), out.detach()) == 0
    x_ref = x.detach().clone().requires_grad_(True)
    ref = reference_block(block, x_ref)
    assert rel(out, ref) < 1e-5
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *block.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [x_ref, *block.parameters()], g)
    for a, b in zip(grads, ref_grads, strict=True):
        assert rel(a, b) < 1e-5


def test_attention_uses_the_fused_cpu_kernel_not_the_math_fallback():
    block = _randomise(AttentionBlock(128, num_head_channels=64, use_new_attention_order=True))
    x = torch.randn(2, 128, 16, 16)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(x)
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert not {"aten::isneginf", "aten::where"} & names
    # the math backend still gives the same numbers
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        assert rel(block(x), reference_block(block, x)) < 1e-5


def test_attention_pool_computes_only_the_kept_query():
    pool = _randomise(AttentionPool2d(4, 64, 32, 7))
    x = torch.randn(3, 64, 4, 4, requires_grad=True)
    flat = x.reshape(3, 64, -1)
    tokens = torch.cat([flat.mean(dim=-1, keepdim=True), flat], dim=-1) + pool.positional_embedding[None]
    qkv = F.conv1d(tokens, pool.qkv_proj.weight, pool.qkv_proj.bias)
    h = reference_attention(qkv, pool.num_heads, legacy=False)
    ref = F.conv1d(h, pool.c_proj.weight, pool.c_proj.bias)[:, :, 0]
    out = pool(x)
    assert out.shape == (3, 7) and rel(out, ref) < 1e-6
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x)
    assert rel(gx, gx_ref) < 1e-5


def reference_resblock(block: ResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """ResBlock through its modules, out of place (OpenAI's formulation)."""
    if block.updown:
        h = block.in_layers[1](block.in_layers[0](x))
        h = block.in_layers[2](block.h_upd(h))
        x = block.x_upd(x)
    else:
        h = block.in_layers(x)
    emb_out = block.emb_layers(emb)[:, :, None, None]
    if block.use_scale_shift_norm:
        scale, shift = emb_out.chunk(2, dim=1)
        h = block.out_layers[0](h) * (1 + scale) + shift
        h = block.out_layers[3](block.out_layers[2](block.out_layers[1](h)))
    else:
        h = block.out_layers(h + emb_out)
    return block.skip_connection(x) + h


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_scale_shift_norm=True),
        dict(use_scale_shift_norm=False, out_channels=64),
        dict(use_scale_shift_norm=True, down=True),
        dict(use_scale_shift_norm=True, up=True),
    ],
)
def test_resblock_in_place_paths_match_reference(kwargs):
    block = _randomise(ResBlock(32, 16, 0.0, **kwargs)).eval()
    x = torch.randn(2, 32, 8, 8)
    emb = torch.randn(2, 16)
    ref = reference_resblock(block, x, emb)
    x_before = x.clone()
    with torch.no_grad():
        fast = block(x, emb)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # the input is never overwritten
    assert rel(fast, ref) < 1e-6
    x_grad = x.clone().requires_grad_(True)
    slow = block(x_grad, emb)
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=0)  # both paths: the same operations
    (g,) = torch.autograd.grad(slow.square().sum(), x_grad)
    x_ref = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference_resblock(block, x_ref, emb).square().sum(), x_ref)
    assert rel(g, g_ref) < 1e-5


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upsample_is_nearest_interpolation_without_the_interpolation_kernel(memory_format):
    from adm.nn.layers import Upsample

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=memory_format).requires_grad_(True)
    up = Upsample(6, use_conv=True)
    out = up(x)
    reference = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert torch.equal(out, reference)
    grad = torch.randn_like(out)
    (g_out,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(reference, x, grad)
    assert rel(g_out, g_ref) < 1e-6
    with torch.profiler.profile() as prof, torch.no_grad():
        up(x)
    assert not [e.key for e in prof.key_averages() if "upsample_nearest" in e.key]
    from adm.nn.layers import upsample_nearest_2x

    up_only = upsample_nearest_2x(x)
    with torch.profiler.profile() as prof:
        torch.autograd.grad(up_only, x, torch.randn_like(up_only))
    keys = {e.key for e in prof.key_averages()}
    assert "aten::avg_pool2d" in keys and "aten::sum" not in keys  # the gradient is a 2x2 sum pooling


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_cpu_dropout_drops_each_element_with_probability_p_and_keeps_the_expectation(p):
    from adm.nn.layers import Dropout

    torch.manual_seed(0)
    n = 1 << 20
    drop = Dropout(p)
    y = drop(torch.ones(n))
    p_eff = round(p * 2**16) / 2**16
    assert abs(p_eff - p) <= 1e-3 * p
    dropped = y == 0
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.float().mean().item() - p) < 5 * sigma
    kept = y[~dropped]
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - p_eff)))  # exactly unbiased for p_eff
    # Every 16-bit lane of the 64-bit draws is used alike (a draw over [0, 2**63) would never drop lane 3),
    # and the four lanes of one draw are independent.
    lanes = dropped.view(-1, 4).float()
    for lane in range(4):
        assert abs(lanes[:, lane].mean().item() - p) < 5 * math.sqrt(p * (1 - p) / (n // 4))
    all_four = lanes.prod(dim=1).mean().item()
    assert abs(all_four - p**4) < 5 * math.sqrt(p**4 * (1 - p**4) / (n // 4))


def test_cpu_dropout_gradient_seeding_and_fallbacks():
    from adm.nn.layers import Dropout

    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    drop = Dropout(0.1)
    torch.manual_seed(3)
    y = drop(x)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    mask = y.detach() / x.detach()  # 0 where dropped, the scale where kept
    torch.testing.assert_close(gx, grad * mask)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # masks come from the default generator
    assert not torch.equal(drop(x), y)
    assert drop(x.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(drop.eval()(x), x)
    drop.train()
    with torch.profiler.profile() as prof:
        Dropout(0.001)(x)  # 0.001 is not within 0.1% of a multiple of 2**-16: plain F.dropout
        Dropout(1.0)(x)
    assert "aten::bernoulli_" in {e.key for e in prof.key_averages()}
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    block = ResBlock(32, 16, 0.1)
    assert isinstance(block.out_layers[2], Dropout)
    assert not [k for k in block.state_dict() if k.startswith("out_layers.2")]
