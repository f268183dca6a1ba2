"""Network behaviour beyond the golden forwards: attention maths, errors, checkpointing, autocast, compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils.checkpoint

from adm.nn import (
    AttentionBlock,
    EncoderUNet,
    GroupNorm32,
    ResBlock,
    SuperResUNet,
    UNet,
    qkv_attention,
    timestep_embedding,
)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter (zero-initialised output layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in) * (1.0 if p.ndim > 1 else 0.1))
    return model


def small_unet(**overrides) -> UNet:
    kwargs = dict(
        image_size=16,
        in_channels=3,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=[8],
        channel_mult=[1, 2],
        learn_sigma=True,
        num_classes=5,
        num_head_channels=16,
    )
    kwargs.update(overrides)
    return _randomise(UNet(**kwargs))


def small_classifier(**overrides) -> EncoderUNet:
    kwargs = dict(
        image_size=16,
        in_channels=3,
        model_channels=32,
        out_channels=5,
        num_res_blocks=1,
        attention_resolutions=[8],
        channel_mult=[1, 2],
        pool="attention",
        num_head_channels=32,
    )
    kwargs.update(overrides)
    return _randomise(EncoderUNet(**kwargs))


# ----------------------------------------------------------------------------------------------- maths


def _reference_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """OpenAI's formulation: q and k each scaled by ch**-0.25, float32 softmax, einsum."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)


@pytest.mark.parametrize("legacy", [True, False])
def test_sdpa_attention_matches_openai_formula_for_both_layouts(legacy):
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 8, 37) * 3
    ours = qkv_attention(qkv, num_heads=4, legacy=legacy)
    ref = _reference_attention(qkv, 4, legacy)
    assert (ours - ref).norm() / ref.norm() < 1e-6
    other = _reference_attention(qkv, 4, not legacy)  # the layouts really differ
    assert (ours - other).norm() / other.norm() > 1e-2


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 6)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = torch.tensor(
        [[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in (0, 7, 999)]
    )
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    assert timestep_embedding(torch.tensor([2.5]), 7).shape == (1, 7)  # fractional t, odd width
    assert timestep_embedding(torch.tensor([2.5]), 7)[0, -1] == 0


def test_output_channels_follow_learn_sigma_and_non_square_inputs_work():
    x = torch.randn(2, 3, 16, 24)
    t = torch.tensor([1, 900])
    y = torch.tensor([0, 4])
    assert small_unet(learn_sigma=True).eval()(x, t, y).shape == (2, 6, 16, 24)
    net = small_unet(learn_sigma=False, num_classes=None).eval()
    assert net.out_channels == 3 and not net.learn_sigma
    assert net(x, t).shape == (2, 3, 16, 24)
    # scalar t broadcasts to the batch
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.tensor(5)), net(x, torch.tensor([5, 5])))
    clf = small_classifier(pool="adaptive").eval()
    assert clf(x, t).shape == (2, 5)


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_pools(pool):
    clf = small_classifier(pool=pool).eval()
    logits = clf(torch.randn(3, 3, 16, 16), torch.tensor([0, 5, 9]))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    assert clf.num_classes == 5


def test_mnist_sized_single_channel_28px():
    net = small_unet(image_size=28, in_channels=1, channel_mult=[1, 2, 2], attention_resolutions=[7])
    out = net(torch.randn(2, 1, 28, 28), torch.tensor([3, 4]), torch.tensor([1, 2]))
    assert out.shape == (2, 2, 28, 28)
    clf = small_classifier(image_size=28, in_channels=1, channel_mult=[1, 2, 2], attention_resolutions=[14])
    assert clf(torch.randn(2, 1, 28, 28), torch.tensor([3, 4])).shape == (2, 5)
    sr = _randomise(
        SuperResUNet(
            image_size=28,
            in_channels=1,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=[],
            channel_mult=[1, 2, 2],
            learn_sigma=True,
            num_classes=None,
        )
    )
    assert sr(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), low_res=torch.randn(2, 1, 14, 14)).shape == (
        2,
        2,
        28,
        28,
    )


def test_superres_resizes_low_res_bilinearly():
    sr = _randomise(
        SuperResUNet(
            image_size=16,
            in_channels=3,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=[8],
            channel_mult=[1, 2],
            learn_sigma=False,
            num_classes=None,
        )
    ).eval()
    seen = {}

    def grab(module, args):
        seen["x"] = args[0]

    sr.input_blocks[0].register_forward_pre_hook(grab)
    x, low = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 8, 8)
    sr(x, torch.tensor([3]), low_res=low)
    # independent bilinear (align_corners=False) 2x upsampling: pixel i samples the input at (i + 0.5)/2 - 0.5
    coords = ((torch.arange(16) + 0.5) / 2 - 0.5).clamp(min=0)
    lo = coords.floor().long().clamp(max=7)
    hi = (lo + 1).clamp(max=7)
    w = coords - lo
    rows = low[..., lo, :] * (1 - w)[:, None] + low[..., hi, :] * w[:, None]
    expected = rows[..., lo] * (1 - w) + rows[..., hi] * w
    torch.testing.assert_close(seen["x"][:, 3:], expected)
    torch.testing.assert_close(seen["x"][:, :3], x)


# ---------------------------------------------------------------------------------------------- errors


def test_label_errors():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="unconditional"):
        small_unet(num_classes=None)(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        small_unet()(x, t)
    with pytest.raises(ValueError, match="y must have shape"):
        small_unet()(x, t, torch.tensor([0, 1, 2]))


def test_input_shape_errors():
    net = small_unet()
    t, y = torch.tensor([1, 2]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="1 channels but UNet was built with in_channels=3"):
        net(torch.randn(2, 1, 16, 16), t, y)
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.randn(2, 3, 15, 16), t, y)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(torch.randn(3, 16, 16), t, y)
    with pytest.raises(ValueError, match="one timestep per sample"):
        net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2, 3]), y)
    clf = small_classifier()
    with pytest.raises(ValueError, match="16x16 inputs only"):
        clf(torch.randn(2, 3, 16, 32), t)


def test_superres_errors():
    sr = SuperResUNet(
        image_size=16,
        in_channels=3,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=[],
        channel_mult=[1, 2],
        learn_sigma=True,
        num_classes=3,
    )
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([4]), torch.tensor([1])
    with pytest.raises(ValueError, match="needs the low-resolution image"):
        sr(x, t, y=y)
    with pytest.raises(ValueError, match="low_res has 1 channels"):
        sr(x, t, low_res=torch.randn(1, 1, 8, 8), y=y)
    assert sr(x, t, torch.randn(1, 3, 8, 8), y).shape == (1, 6, 16, 16)


def test_constructor_errors():
    with pytest.raises(ValueError, match="attention resolution 12 is never reached"):
        small_unet(attention_resolutions=[12])
    with pytest.raises(ValueError, match="unknown pool"):
        small_classifier(pool="max")
    with pytest.raises(ValueError, match="needs num_head_channels"):
        small_classifier(num_head_channels=-1)
    with pytest.raises(ValueError, match="divisible by 32"):
        small_unet(model_channels=24)
    with pytest.raises(ValueError, match="num_head_channels=24"):
        small_unet(num_head_channels=24)


# ------------------------------------------------------------------------------- checkpointing / autocast


def _grads(net: UNet, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    torch.manual_seed(seed)  # dropout masks
    out = net(x, torch.tensor([3, 700]), torch.tensor([1, 4]))
    (out.square().mean() + out[:, :1].sum()).backward()
    return x.grad, {n: p.grad.clone() for n, p in net.named_parameters()}


def test_gradient_checkpointing_gives_same_grads_and_goes_through_torch_checkpoint(monkeypatch):
    plain = small_unet(dropout=0.2).train()
    ckpt = small_unet(dropout=0.2, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    gx_plain, g_plain = _grads(plain, seed=3)
    assert calls == []
    gx_ckpt, g_ckpt = _grads(ckpt, seed=3)
    n_blocks = sum(isinstance(m, ResBlock | AttentionBlock) for m in ckpt.modules())
    # forward calls once per block, backward recomputes without calling checkpoint again
    assert len(calls) == n_blocks and set(calls) == {False}
    torch.testing.assert_close(gx_ckpt, gx_plain, rtol=0, atol=0)
    for name, grad in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)

    calls.clear()
    with torch.no_grad():  # nothing to save: no checkpointing
        ckpt(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))
    assert calls == []


def _saved_tensor_count(net: UNet) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    x = torch.randn(2, 3, 16, 16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    return count


def test_gradient_checkpointing_saves_fewer_activations():
    plain = small_unet().train()
    ckpt = small_unet(use_checkpoint=True).train()
    assert _saved_tensor_count(ckpt) < _saved_tensor_count(plain) / 3


def test_group_norm_runs_in_float32_under_autocast():
    norm = GroupNorm32(64)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 64, 4, 4, dtype=dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = norm(x)
        assert out.dtype == torch.float32
        ref = torch.nn.functional.group_norm(x.float(), 32, norm.weight, norm.bias, 1e-5)
        torch.testing.assert_close(out, ref)
    assert norm(torch.randn(2, 64, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16  # no autocast
    assert norm.eps == 1e-5 and norm.num_groups == 32

    # inside a whole network under autocast: every GroupNorm output is float32
    net = small_unet().eval()
    dtypes = set()
    for m in net.modules():
        if isinstance(m, GroupNorm32):
            m.register_forward_hook(lambda mod, a, out: dtypes.add(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = net(torch.randn(1, 3, 16, 16), torch.tensor([4]), torch.tensor([2]))
    assert dtypes == {torch.float32} and torch.isfinite(out).all()


def test_meta_device_construction():
    with torch.device("meta"):
        net = UNet(
            image_size=256,
            in_channels=3,
            model_channels=256,
            num_res_blocks=2,
            attention_resolutions=[32, 16, 8],
            channel_mult=[1, 1, 2, 2, 4, 4],
            learn_sigma=True,
            num_classes=1000,
            num_head_channels=64,
        )
    assert all(p.is_meta for p in net.parameters())


# ------------------------------------------------------------------------------------------- compile


def _compile_and_compare(fn, *args):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), fn(*args))


def test_fullgraph_compile_eager_backend():
    unet = small_unet().eval()
    args = (torch.randn(2, 3, 16, 16), torch.tensor([5, 600]), torch.tensor([1, 3]))
    _compile_and_compare(unet, *args)


@pytest.mark.slow
def test_fullgraph_compile_classifier_and_superres():
    clf = small_classifier().eval()
    sr = _randomise(
        SuperResUNet(
            image_size=16,
            in_channels=3,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=[8],
            channel_mult=[1, 2],
            learn_sigma=True,
            num_classes=5,
            use_new_attention_order=True,
        )
    ).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 600]), torch.tensor([1, 3])
    _compile_and_compare(clf, x, t)
    _compile_and_compare(sr, x, t, torch.randn(2, 3, 8, 8), y)


@pytest.mark.slow
def test_fullgraph_compile_training_with_checkpointing():
    net = small_unet(use_checkpoint=True, dropout=0.1).train()
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    out = compiled(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
