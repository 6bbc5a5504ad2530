"""CrissCrossBlock (CCNet): invalid arguments, mmcv parity, an element-wise restatement
of the equations, the dense map, registry/init/training, precision."""
import itertools

import pytest
import torch
from mmcv.ops import CrissCrossAttention

from mmctx.models.blocks import criss_cross
from mmctx.models.blocks.criss_cross import (CrissCrossBlock, convert_mmcv_criss_cross,
                                             criss_cross_logits)


def randomize(block: CrissCrossBlock, gamma: float = 0.8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        block.gamma.fill_(gamma)
    return block


# ----------------------------------------------------------------- invalid arguments
@pytest.mark.parametrize('kwargs, error, match', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels='16'), TypeError, 'in_channels must be an int'),
    (dict(in_channels=16, reduction=0), ValueError, 'reduction must be an int >= 1'),
    (dict(in_channels=16, reduction=2.), TypeError, 'reduction must be an int'),
    (dict(in_channels=4), ValueError, 'reduction=8 leaves 0 query/key channels for '
     'in_channels=4; use reduction <= 4'),
    (dict(in_channels=16, recurrence=0), ValueError, 'recurrence must be an int >= 1'),
    (dict(in_channels=16, recurrence=True), TypeError, 'recurrence must be an int'),
    (dict(in_channels=16, dim=1), ValueError, 'CrissCrossBlock needs dim=2 or 3.*'
     'NonLocalBlock.*got dim=1'),
    (dict(in_channels=16, dim=4), ValueError, r'dim must be one of \[1, 2, 3\], got 4'),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CrissCrossBlock(**kwargs)


def test_invalid_inputs():
    block = CrissCrossBlock(16)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got ndarray'):
        block(torch.zeros(1, 16, 3, 3).numpy())
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input .*'
                       r'got shape \(1, 16, 2, 3, 3\)'):
        block(torch.zeros(1, 16, 2, 3, 3))
    with pytest.raises(ValueError, match='in_channels=16, got an input with 8 channels'):
        block.forward_with_attention(torch.zeros(1, 8, 3, 3))


# ------------------------------------------------------------------- mmcv parity
def mmcv_pair(channels: int, seed: int, gamma: float):
    torch.manual_seed(seed)
    ref = CrissCrossAttention(channels)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.5)
        ref.gamma.scale.fill_(gamma)
    block = CrissCrossBlock(channels)
    block.load_state_dict(convert_mmcv_criss_cross(ref.state_dict()))  # strict
    return ref, block


@pytest.mark.parametrize('size', [(5, 7), (8, 3), (1, 6), (6, 1), (4, 4)])
def test_matches_mmcv(size, monkeypatch):
    """Training (the logits concatenated, autograd) and inference (no gradient: each
    image's logits written into one buffer, softmax in place) against mmcv."""
    ref, block = mmcv_pair(16, seed=sum(size), gamma=-0.6)
    x = torch.randn(2, 16, *size)
    expected = ref(x)
    assert not torch.allclose(expected, x, atol=1e-2)  # the attention term matters
    calls = []
    into = criss_cross._logits_2d_into
    monkeypatch.setattr(criss_cross, '_logits_2d_into',
                        lambda q, k: calls.append(q.shape) or into(q, k))
    out = block(x)
    assert out.requires_grad and not calls
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert calls == [(1, *size, 2)] * 4  # per image, per mode


def test_recurrence_matches_mmcv_twice():
    ref, one = mmcv_pair(24, seed=3, gamma=0.9)
    two = CrissCrossBlock(24, recurrence=2)
    two.load_state_dict(one.state_dict())
    x = torch.randn(2, 24, 6, 9)
    expected = ref(ref(x))
    assert not torch.allclose(expected, ref(x), atol=1e-2)
    # the weights ~N(0, 0.5) make logits of O(10) and outputs of O(25): the two fp32
    # computations (one stacked product vs three convolutions) round differently by
    # up to ~1e-5 of the output's scale, and mmctx's rounding is the smaller one
    scale = expected.abs().max().item()
    torch.testing.assert_close(two(x), expected, rtol=1e-5, atol=1e-5 * scale)
    exact = CrissCrossBlock(24, recurrence=2).double()
    exact.load_state_dict(one.state_dict())
    exact = exact(x.double())
    assert (two(x).double() - exact).abs().max() <= (expected.double() - exact).abs().max()


def test_convert_keys_and_prefixes():
    ref = CrissCrossAttention(16)
    sd = {f'decode_head.cca.{k}': v for k, v in ref.state_dict().items()}
    sd['decode_head.conv_seg.weight'] = torch.ones(3)
    out = convert_mmcv_criss_cross(sd, 'decode_head.cca.', 'decode_head.block.')
    assert set(out) == {'decode_head.conv_seg.weight', 'decode_head.block.gamma'} | {
        f'decode_head.block.{c}_conv.{w}' for c in ('query', 'key', 'value')
        for w in ('weight', 'bias')}
    assert out['decode_head.block.gamma'].shape == (1, )
    # the official CCNet layout (gamma of shape (1,)) loads without conversion
    block = CrissCrossBlock(16)
    block.load_state_dict(convert_mmcv_criss_cross(ref.state_dict()))


# ------------------------------------------------- element-wise restatement (loops)
def conv1x1(conv, x):
    w = conv.weight.reshape(conv.weight.shape[0], -1)
    return torch.einsum('oc,nc...->no...', w, x) + conv.bias.reshape(
        1, -1, *([1] * (x.dim() - 2)))


def reference(block, x):
    """y_p = x_p + γ Σ_{p' in cross(p)} softmax_{p'}(q_p·k_p') v_p', where cross(p) is
    every position differing from p in at most one coordinate, p itself once."""
    q, k, v = (conv1x1(c, x) for c in (block.query_conv, block.key_conv,
                                       block.value_conv))
    spatial = x.shape[2:]
    out = x.clone()
    positions = list(itertools.product(*(range(s) for s in spatial)))
    for n in range(x.shape[0]):
        for p in positions:
            keys = [r for r in positions if sum(a != b for a, b in zip(p, r)) <= 1]
            logits = torch.stack([q[(n, slice(None)) + p] @ k[(n, slice(None)) + r]
                                  for r in keys])
            w = logits.softmax(0)
            o = sum(wi * v[(n, slice(None)) + r] for wi, r in zip(w, keys))
            out[(n, slice(None)) + p] = x[(n, slice(None)) + p] + block.gamma * o
    return out


@pytest.mark.parametrize('dim, size, recurrence', [
    (2, (3, 5), 1), (2, (4, 2), 2), (2, (1, 4), 1),
    (3, (2, 3, 4), 1), (3, (3, 1, 2), 2), (3, (1, 1, 3), 1)])
def test_elementwise_reference(dim, size, recurrence):
    block = randomize(CrissCrossBlock(8, reduction=4, recurrence=recurrence, dim=dim),
                      gamma=0.7, seed=dim).double()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    expected = x
    with torch.no_grad():
        for _ in range(recurrence):
            expected = reference(block, expected)
        assert not torch.allclose(expected, x, atol=1e-3)
        torch.testing.assert_close(block(x), expected)


# ------------------------------------------------------------ forward_with_attention
def cross_mask(spatial):
    positions = list(itertools.product(*(range(s) for s in spatial)))
    return torch.tensor([[sum(a != b for a, b in zip(p, r)) <= 1 for r in positions]
                         for p in positions])


@pytest.mark.parametrize('dim, size, recurrence', [
    (2, (4, 6), 1), (2, (5, 3), 2), (3, (2, 3, 4), 1), (3, (3, 2, 2), 2)])
def test_forward_with_attention(dim, size, recurrence):
    block = randomize(CrissCrossBlock(16, recurrence=recurrence, dim=dim), gamma=0.5,
                      seed=7).double()
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        y, maps = block.forward_with_attention(x)
        assert set(maps) == {'pairwise'}
        m = maps['pairwise']
        length = x[0, 0].numel()
        assert m.shape == (2, length, length)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, length, dtype=m.dtype))
        mask = cross_mask(size)
        assert (m[:, ~mask] == 0).all()
        assert (m[:, mask] > 0).all()  # every neighbour, and the position itself, once
        torch.testing.assert_close(y, block(x))
        # the output from the map: the last pass, applied to the previous pass's output
        prev = x
        for _ in range(recurrence - 1):
            prev = block.step(prev)[0]
        v = block.value_conv(prev).flatten(2)  # (N, C, L)
        rebuilt = prev + block.gamma * torch.einsum('npq,ncq->ncp', m, v).reshape(
            prev.shape)
        torch.testing.assert_close(y, rebuilt)


# ------------------------------------------------------- registry, init, training
def test_registry_identity_and_sgd():
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.CrissCrossBlock', in_channels=16))
    assert isinstance(block, CrissCrossBlock)
    assert (block.reduction, block.recurrence, block.dim) == (8, 1, 2)
    assert block._abbr_ == 'cc_block'
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(block(x), x)  # γ = 0: the identity
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x).pow(2).mean().backward()  # any loss; only γ has a gradient at γ = 0
    target = torch.randn_like(x)
    opt.zero_grad()
    (block(x) - target).pow(2).mean().backward()
    assert block.gamma.grad.abs().item() > 0
    opt.step()
    assert block.gamma.item() != 0
    assert not torch.allclose(block(x), x)
    # now every parameter receives a gradient
    opt.zero_grad()
    (block(x) - target).pow(2).mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reset_parameters_zeroes_gamma():
    block = randomize(CrissCrossBlock(16, dim=3))
    block.init_weights()
    x = torch.randn(1, 16, 2, 3, 4)
    assert torch.equal(block(x), x)


# -------------------------------------------------------------------- precision
@pytest.mark.parametrize('dim, size', [(2, (3, 4)), (3, (2, 2, 3))])
def test_gradcheck(dim, size):
    block = randomize(CrissCrossBlock(8, reduction=4, recurrence=2, dim=dim),
                      gamma=0.6, seed=1).double()
    x = torch.randn(1, 8, *size, dtype=torch.float64, requires_grad=True)
    params = tuple(block.parameters())

    def f(inp, *ps):
        return torch.func.functional_call(
            block, dict(zip([n for n, _ in block.named_parameters()], ps)), (inp, ))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(2)
    block = CrissCrossBlock(32, recurrence=2)  # the default init, logits of O(1)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 32, 7, 9)
    ref = block(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(x)
        _, maps = block.forward_with_attention(x)
    assert y.dtype == torch.float32 and maps['pairwise'].dtype == torch.float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, rtol=5e-2, atol=5e-2)
    assert not torch.allclose(ref, x, atol=1e-1)


def test_masked_diagonal_is_finite_in_half():
    """The excluded diagonal is a finite large negative in any dtype (fp16/ONNX safe)."""
    q = torch.randn(1, 2, 3, 4).half()
    for e in criss_cross_logits(q, q):
        assert torch.isfinite(e).all()
    assert criss_cross_logits(q, q)[0].dtype == torch.float16


@pytest.mark.parametrize('dim, size', [(2, (1, 5)), (2, (1, 1)), (3, (1, 1, 4)),
                                       (3, (1, 3, 1))])
def test_fully_masked_branch(dim, size):
    """H = 1 (T = H = 1): a whole branch is only the masked diagonal."""
    block = randomize(CrissCrossBlock(8, reduction=2, dim=dim), gamma=0.9, seed=4)
    x = torch.randn(2, 8, *size, requires_grad=True)
    y, maps = block.forward_with_attention(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())
    torch.testing.assert_close(maps['pairwise'].sum(-1), torch.ones(2, x[0, 0].numel()))
    with torch.no_grad():
        torch.testing.assert_close(y, reference(block, x))
        y16 = block.half()(x.detach().half())
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16.float(), y.detach(), rtol=2e-2, atol=2e-2)


def test_forward_keeps_no_dense_map_for_backward():
    """What autograd saves on ``forward``: the L·(H+W−1) criss-cross logits (about), never
    an L×L map."""
    from .conftest import largest_saved_for_backward
    torch.manual_seed(0)
    block = CrissCrossBlock(16)
    torch.nn.init.constant_(block.gamma, 0.5)
    x = torch.randn(1, 16, 24, 20, requires_grad=True)
    dense = 24 * 20 * 24 * 20
    saved = largest_saved_for_backward(block, x)
    assert 24 * 20 * (24 + 20 - 1) <= saved < dense / 8  # the logits, not the map


@pytest.mark.parametrize('dim', [2, 3])
def test_input_layouts(dim):
    """The eager path (images one at a time, channels-last passes) gives the same output
    for NCHW, channels_last and other strided inputs, and the gradient reaches x."""
    block = randomize(CrissCrossBlock(8, reduction=4, recurrence=2, dim=dim), gamma=0.7,
                      seed=5).double()
    size = (4, 5) if dim == 2 else (2, 3, 4)
    x = torch.randn(3, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.cat([reference(block, reference(block, x[i:i + 1]))
                              for i in range(3)])
    fmt = torch.channels_last if dim == 2 else torch.channels_last_3d
    strided = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    grads = []
    for inp in (x, x.to(memory_format=fmt), strided):
        inp = inp.clone().requires_grad_()
        y = block(inp)
        assert y.is_contiguous()
        torch.testing.assert_close(y, expected)
        y.square().sum().backward()
        grads.append(inp.grad)
    assert grads[0].abs().sum() > 0
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0])
