"""LESABlock: bad arguments, an independent re-statement of the official equations,
memory-efficient = explicit (eval and train, gradients, running statistics), any size,
the paper's comparison arms."""
import copy
import glob
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import LESABlock
from mmctx.models.blocks.attention import ChunkedAttention
from mmctx.models.blocks.lesa import offset_table

from .conftest import ROOT


def randomized(block, seed=0):
    """Non-trivial weights and running statistics (BN γ=1, β=0 after init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for name, b in block.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.2)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
    return block


# --- bad arguments first ------------------------------------------------------------

@pytest.mark.parametrize('kwargs, error, match', [
    (dict(dim=3), ValueError, 'dim must be 2'),
    (dict(out_channels=24), ValueError, 'divisible by 2·num_heads=16'),
    (dict(num_heads=5), ValueError, 'divisible by 2·num_heads'),
    (dict(pe_type='sine'), ValueError, 'pe_type must be one of'),
    (dict(fusion='max'), ValueError, "fusion must be one of \\['gate', 'sum'\\]"),
    (dict(unary=False, binary=False), ValueError, 'needs the unary or the binary'),
    (dict(unary=1), TypeError, 'unary must be a bool'),
    (dict(pe_size=(4, 4, 4)), TypeError, 'pe_size must be an int or a pair'),
    (dict(pe_size=0), ValueError, 'pe_size\\[0\\] must be an int >= 1'),
    (dict(stride=0), ValueError, 'stride must be an int >= 1'),
    (dict(dcn='DCN'), TypeError, 'dcn must be None or an mmcv conv config'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LESABlock(64, **kwargs)


def test_bad_inputs_and_the_classification_size():
    block = LESABlock(32, num_heads=4, pe_type='classification', pe_size=(4, 5))
    with pytest.raises(ValueError, match=r"tied to the feature-map size .*pe_size=\(4, 5\)"
                       r".*got 5×4"):
        block(torch.randn(1, 32, 5, 4))
    with pytest.raises(ValueError, match='expects a 4D input'):
        block(torch.randn(1, 32, 20))
    with pytest.raises(ValueError, match='in_channels=32, got an input with 16'):
        block(torch.randn(1, 16, 4, 5))


# --- an independent re-statement of the official equations ---------------------------

def bn_eval(bn, z, c):
    """Channel ``c`` of an eval-mode BN applied to ``z``."""
    return ((z - bn.running_mean[c]) / torch.sqrt(bn.running_var[c] + bn.eps)
            * bn.weight[c] + bn.bias[c])


def reference(block, x):
    """LESA's output written element by element from the paper / official equations
    (eval mode): loops over heads and query positions, no code shared with the block."""
    n, _, h, w = x.shape
    L, g, d, dv, C = h * w, block.num_heads, block.qk_channels, block.v_channels, \
        block.out_channels
    flat = x.flatten(2)  # (N, Cin, L)
    unary = block.bn_x(block.x_transform(x)) if block.unary else None
    qkv = torch.einsum('oc,ncl->nol', block.qkv_transform.weight[..., 0], flat)
    qkv = torch.stack([bn_eval(block.bn_qkv, qkv[:, o], o) for o in range(2 * C)], 1)
    outs = torch.zeros(n, C * (2 if block.pe_type == 'classification' else 1), L,
                       dtype=x.dtype)
    for head in range(g):
        base = head * (2 * d + dv)
        q, k, v = qkv[:, base:base + d], qkv[:, base + d:base + 2 * d], \
            qkv[:, base + 2 * d:base + 2 * d + dv]  # (N, d|dv, L)
        for i in range(L):
            yi, xi = divmod(i, w)
            logits = []
            for j in range(L):
                yj, xj = divmod(j, w)
                s = bn_eval(block.bn_similarity, (q[:, :, i] * k[:, :, j]).sum(1), head)
                if block.pe_type == 'detection_qr':
                    rh = offset_table(block.rel_height, h)[yj - yi + h - 1]
                    rw = offset_table(block.rel_width, w)[xj - xi + w - 1]
                    s = s + bn_eval(block.bn_similarity, (q[:, :, i] * (rh + rw)).sum(1),
                                    g + head)
                elif block.pe_type == 'classification':
                    r = block.relative[:, i - j + L - 1]
                    s = s + bn_eval(block.bn_similarity, q[:, :, i] @ r[:d], g + head)
                    r = block.relative[:, j - i + L - 1]
                    s = s + bn_eval(block.bn_similarity, k[:, :, j] @ r[d:2 * d],
                                    2 * g + head)
                logits.append(s)
            a = torch.stack(logits, -1).softmax(-1)  # (N, L) over keys
            for c in range(dv):
                ch = head * dv + c
                if block.pe_type == 'classification':
                    rv = torch.stack([block.relative[2 * d + c, i - j + L - 1]
                                      for j in range(L)])
                    outs[:, 2 * ch, i] = (a * v[:, c]).sum(-1)
                    outs[:, 2 * ch + 1, i] = a @ rv
                else:
                    outs[:, ch, i] = (a * v[:, c]).sum(-1)
    bo = block.bn_output
    binary = torch.stack([bn_eval(bo, outs[:, o], o) for o in range(outs.shape[1])], 1)
    if block.pe_type == 'classification':
        binary = binary.view(n, C, 2, L).sum(2)
    binary = binary.view(n, C, h, w)
    if unary is None:
        return binary
    if block.fusion == 'sum':
        return unary + binary
    gate = torch.sigmoid(block.projection(block.reasoning(torch.cat([unary, binary], 1))))
    return unary + gate * binary


@pytest.mark.parametrize('pe_type, size', [
    ('detection_qr', (3, 4)),   # the tables' own size: the official function
    ('detection_qr', (2, 5)),   # any size: height cropped, width interpolated
    ('classification', (3, 4)),
    (None, (3, 4)),
])
def test_matches_an_independent_restatement(pe_type, size):
    torch.manual_seed(0)
    block = randomized(LESABlock(16, out_channels=32, num_heads=4, pe_type=pe_type,
                                 pe_size=(3, 4) if pe_type else 4)).double().eval()
    x = torch.randn(2, 16, *size, dtype=torch.double)
    expected = reference(block, x)
    torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(block.forward_with_attention(x)[0], expected)


def bn_batch(z, weight, bias, dims):
    """Training-mode BN written out: batch mean and biased variance over ``dims``."""
    mean = z.mean(dims, keepdim=True)
    var = ((z - mean) ** 2).mean(dims, keepdim=True)
    shape = [1, -1] + [1] * (z.dim() - 2)
    return (z - mean) / torch.sqrt(var + 1e-5) * weight.view(shape) + bias.view(shape)


def reference_train(block, x):
    """The official equations in training mode (every BN with batch statistics over
    its own axes: qkv/output over batch and positions, the logits over batch and all
    pairs), vectorised, from the block's parameters only; the unary term and the gate
    use the block's conv weights with batch-statistics BNs written out."""
    n, _, h, w = x.shape
    L, g, d, dv, C = h * w, block.num_heads, block.qk_channels, block.v_channels, \
        block.out_channels
    p = dict(block.named_parameters())
    qkv = torch.einsum('oc,ncl->nol', p['qkv_transform.weight'][..., 0], x.flatten(2))
    qkv = bn_batch(qkv, p['bn_qkv.weight'], p['bn_qkv.bias'], (0, 2))
    qkv = qkv.view(n, g, 2 * d + dv, L)
    q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]  # (N, g, ·, L)
    logits = [torch.einsum('ngci,ngcj->ngij', q, k)]
    i = torch.arange(L)
    yi, xi = i // w, i % w
    if block.pe_type == 'detection_qr':
        rh = offset_table(p['rel_height'], h)[yi.view(1, -1) - yi.view(-1, 1) + h - 1]
        rw = offset_table(p['rel_width'], w)[xi.view(1, -1) - xi.view(-1, 1) + w - 1]
        logits.append(torch.einsum('ngci,ijc->ngij', q, rh + rw))  # [i, j]: key − query
    elif block.pe_type == 'classification':
        rel = p['relative']
        off = i.view(-1, 1) - i.view(1, -1) + L - 1  # [i, j] = i − j
        logits.append(torch.einsum('ngci,cij->ngij', q, rel[:d][:, off]))
        logits.append(torch.einsum('ngcj,cji->ngij', k, rel[d:2 * d][:, off]))
    stacked = bn_batch(torch.cat(logits, 1), p['bn_similarity.weight'],
                       p['bn_similarity.bias'], (0, 2, 3))
    a = stacked.view(n, len(logits), g, L, L).sum(1).softmax(-1)
    sv = torch.einsum('ngij,ngcj->ngci', a, v).reshape(n, C, L)
    if block.pe_type == 'classification':
        sve = torch.einsum('ngij,cij->ngci', a, p['relative'][2 * d:][:, off]).reshape(n, C, L)
        pair = torch.stack([sv, sve], 2).view(n, 2 * C, L)
        binary = bn_batch(pair, p['bn_output.weight'], p['bn_output.bias'], (0, 2))
        binary = binary.view(n, C, 2, L).sum(2)
    else:
        binary = bn_batch(sv, p['bn_output.weight'], p['bn_output.bias'], (0, 2))
    binary = binary.view(n, C, h, w)
    conv = torch.nn.functional.conv2d
    u = conv(conv(x, p['x_transform.0.weight'], padding=1, groups=g), p['x_transform.1.weight'])
    unary = bn_batch(u, p['bn_x.weight'], p['bn_x.bias'], (0, 2, 3))
    r = conv(torch.relu(torch.cat([unary, binary], 1)), p['reasoning.1.weight'])
    r = torch.relu(bn_batch(r, p['reasoning.2.weight'], p['reasoning.2.bias'], (0, 2, 3)))
    gate = bn_batch(conv(r, p['projection.0.weight']), p['projection.1.weight'],
                    p['projection.1.bias'], (0, 2, 3))
    return unary + torch.sigmoid(gate) * binary


@pytest.mark.parametrize('pe_type, size', [('detection_qr', (3, 4)), ('detection_qr', (5, 2)),
                                           ('classification', (3, 4))])
def test_training_mode_matches_an_independent_restatement(pe_type, size):
    """Training mode (batch statistics everywhere): both paths = the re-statement, and
    the memory-efficient path's logit-BN running statistics = the explicit path's."""
    torch.manual_seed(4)
    block = randomized(LESABlock(16, num_heads=2, pe_type=pe_type,
                                 pe_size=(3, 4))).double().train()
    x = torch.randn(3, 16, *size, dtype=torch.double)
    expected = reference_train(block, x)
    explicit = copy.deepcopy(block)
    torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(explicit.forward_with_attention(x)[0], expected)
    torch.testing.assert_close(block.bn_similarity.running_var,
                               explicit.bn_similarity.running_var)


# --- memory-efficient = explicit -----------------------------------------------------

def grads(block, x, out):
    params = [p for p in block.parameters()]
    return torch.autograd.grad((out * torch.arange(out.numel(), dtype=out.dtype)
                                .view_as(out).sin()).sum(), [x] + params, allow_unused=True)


@pytest.mark.parametrize('pe_type, path', [
    ('detection_qr', 'one chunk'), ('detection_qr', 'chunks'), ('detection_qr', 'fused'),
    (None, 'fused')])
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('size', [(6, 5), (9, 11)])  # below and above pe_size=8
def test_efficient_equals_explicit(pe_type, path, train, size, monkeypatch):
    """2-D relative form: chunks of queries with the relative logits added to q kᵀ
    (eager), or one fused call on the augmented query / key (exported and compiled
    graphs; forced here as an export would)."""
    torch.manual_seed(1)
    block = randomized(LESABlock(16, num_heads=2, pe_type=pe_type, pe_size=8)).double()
    block.train(train)
    twin = copy.deepcopy(block)
    if path == 'chunks':  # 7 queries per chunk (of one head of one image), the last partial
        block.relative_chunk_elements = size[0] * size[1] * 7
    if path == 'fused':
        import mmctx.models.blocks.lesa as lesa_module
        monkeypatch.setattr(lesa_module, 'traced', lambda: True)
    x = torch.randn(2, 16, *size, dtype=torch.double, requires_grad=True)
    fast, (slow, maps) = block(x), twin.forward_with_attention(x)
    torch.testing.assert_close(fast, slow)
    length = size[0] * size[1]
    assert set(maps) == {'pairwise'} and maps['pairwise'].shape == (2, length, length)
    torch.testing.assert_close(maps['pairwise'].sum(-1), torch.ones(2, length,
                                                                     dtype=torch.double))
    names = ['x'] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, grads(block, x, fast), grads(twin, x, slow)):
        if name == 'bn_similarity.bias':  # cancels in the softmax
            assert a is None and (b is None or b.abs().max() < 1e-10)
            continue
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, msg=name)
    for (name, a), (_, b) in zip(block.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)
    if train:  # the running statistics of the logits' BN moved
        assert not torch.allclose(block.bn_similarity.running_var,
                                  torch.ones_like(block.bn_similarity.running_var))


@pytest.mark.parametrize('rows', [12, 5])  # one chunk per head / several, the last partial
def test_relative_attention_function(rows):
    """The training form's hand-written backward: gradcheck (fp64) and the values of
    ``softmax(q kᵀ + α[y_j] + β[x_j]) v`` written out with the map."""
    torch.manual_seed(5)
    b, h, w, d, dv = 2, 3, 4, 3, 5
    length = h * w
    inputs = [torch.randn(b, length, c, dtype=torch.double, requires_grad=True)
              for c in (d, d, dv, h, w)]
    elements = rows * length

    def attend(q, k, v, alpha, beta):
        return ChunkedAttention.apply(q, k, v, alpha, beta, 1., elements)
    torch.autograd.gradcheck(attend, inputs)
    q, k, v, alpha, beta = inputs
    bias = (alpha.unsqueeze(-1) + beta.unsqueeze(-2)).reshape(b, length, length)
    expected = torch.softmax(q @ k.transpose(1, 2) + bias, -1) @ v
    torch.testing.assert_close(attend(*inputs), expected)


@pytest.mark.parametrize('align', [16, 1])
def test_relative_form_with_padded_keys(align, monkeypatch, masked_keys):
    """A 17×17 key grid (289 keys, padded to 304 with masked zero keys): the training
    form's values and gradients (α, β included) and the block's inference chunks equal
    the map written out, with and without the padding."""
    from mmctx.models.blocks import attention
    monkeypatch.setattr(attention, 'KEY_ALIGN', align)
    torch.manual_seed(6)
    b, h, w, d, dv = 2, 17, 17, 3, 5
    length = h * w
    inputs = [torch.randn(b, length, c, dtype=torch.double, requires_grad=True)
              for c in (d, d, dv, h, w)]
    out = ChunkedAttention.apply(*inputs, 1., 100 * length)
    q, k, v, alpha, beta = inputs
    bias = (alpha.unsqueeze(-1) + beta.unsqueeze(-2)).reshape(b, length, length)
    expected = torch.softmax(q @ k.transpose(1, 2) + bias, -1) @ v
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, inputs, grad),
                    torch.autograd.grad(expected, inputs, grad)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-12)
    assert masked_keys and set(masked_keys) == {(304 if align == 16 else 289, 289)}
    masked_keys.clear()
    block = randomized(LESABlock(16, num_heads=2, pe_size=17)).double().eval()
    block.relative_inference_chunk_elements = 4 * length * 7  # several chunks per head
    x = torch.randn(2, 16, h, w, dtype=torch.double)
    with torch.no_grad():
        fast = block(x)
        slow, _ = block.forward_with_attention(x)
    torch.testing.assert_close(fast, slow)
    assert masked_keys and set(masked_keys) == {(304 if align == 16 else 289, 289)}


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode'])
@pytest.mark.parametrize('chunk', [None, 7])  # one chunk / several, the last partial
@pytest.mark.parametrize('train', [False, True])  # α, β per chunk / batch statistics
def test_relative_chunks_without_grad(mode, chunk, train, monkeypatch):
    """Without a gradient the 2-D relative chunks (one head of one image each) share one
    logits buffer and write into one output (no allocation per chunk); in eval α and β
    are made per chunk: same
    outputs as the explicit path, and the block's input is left as it was."""
    torch.manual_seed(3)
    block = randomized(LESABlock(16, num_heads=2, pe_size=8)).double().train(train)
    twin = copy.deepcopy(block)
    size = (9, 11)
    if chunk is not None:
        block.relative_inference_chunk_elements = 2 * 2 * size[0] * size[1] * chunk
    x = torch.randn(2, 16, *size, dtype=torch.double)
    x0 = x.clone()
    calls, chunk_fn = [], LESABlock._relative_chunk_into
    monkeypatch.setattr(ChunkedAttention, 'apply', None)  # the training form: unused
    monkeypatch.setattr(LESABlock, '_relative_chunk_into', staticmethod(
        lambda *a: calls.append((a[0].shape[0], a[5].data_ptr())) or chunk_fn(*a)))
    with getattr(torch, mode)():
        fast = block(x)
        slow, _ = twin.forward_with_attention(x)
        again = block(x)  # the buffer is not carried over between calls
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(again, fast, rtol=0, atol=0)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    # one head of one image per chunk (2 images × 2 heads), 4·7 queries per chunk: 4
    # chunks per head, the last of 15
    length = size[0] * size[1]
    rows = length if chunk is None else 4 * chunk
    sizes = [min(rows, length - s) for s in range(0, length, rows)]
    assert [c for c, _ in calls] == [c for c in sizes for _ in range(4)] * 2
    assert len({p for _, p in calls[:len(calls) // 2]}) == 1  # one buffer per call
    assert not torch.allclose(fast, block.unary_term(x).detach())  # the binary term counts


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('chunk', [None, 7])  # one chunk / several, the last partial
def test_efficient_equals_explicit_classification(train, chunk):
    """The flattened-index form: BN scales from window moments, chunked queries."""
    torch.manual_seed(2)
    block = randomized(LESABlock(16, num_heads=2, pe_type='classification',
                                 pe_size=(5, 6))).double()
    block.train(train)
    twin = copy.deepcopy(block)
    n, length = 2, 30
    if chunk is not None:  # 7 queries per chunk: 5 chunks, the last of 2
        block.chunk_elements = n * 2 * length * chunk
    x = torch.randn(n, 16, 5, 6, dtype=torch.double, requires_grad=True)
    fast, (slow, _) = block(x), twin.forward_with_attention(x)
    torch.testing.assert_close(fast, slow)
    names = ['x'] + [name for name, _ in block.named_parameters()]
    for name, a, b in zip(names, grads(block, x, fast), grads(twin, x, slow)):
        if name == 'bn_similarity.bias':
            assert a is None and (b is None or b.abs().max() < 1e-10)
            continue
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, msg=name)
    for (name, a), (_, b) in zip(block.named_buffers(), twin.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize('pe_type', ['detection_qr', 'classification', None])
def test_efficient_path_keeps_no_attention_map_for_backward(pe_type):
    """What autograd saves on the memory-efficient path: nothing of L×L per head (the
    explicit path saves several such maps)."""
    from .conftest import largest_saved_for_backward as largest
    torch.manual_seed(3)
    block = LESABlock(16, num_heads=2, pe_type=pe_type, pe_size=(12, 10)).train()
    block.chunk_elements = 2 * 2 * 120 * 16  # 16 queries per chunk
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    map_size = 2 * 2 * 120 * 120
    assert largest(block, x) < map_size / 4
    assert largest(lambda t: block.forward_with_attention(t)[0], x) >= map_size


def test_registry_default_any_size_and_every_parameter_learns():
    from mmctx.registry import MODELS
    block = MODELS.build(dict(type='mmctx.LESABlock', in_channels=64))
    assert (block.out_channels, block.num_heads, block.pe_type) == (64, 8, 'detection_qr')
    for size in [(7, 9), (33, 20), (40, 41)]:  # below, around and above pe_size=32
        x = torch.randn(2, 64, *size, requires_grad=True)
        out = block(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in block.named_parameters()
               if (p.grad is None or not p.grad.abs().sum() > 0)
               and n != 'bn_similarity.bias']
    assert not missing


def test_offset_table_crop_and_interpolation():
    table = torch.randn(2 * 4 - 1, 3)  # made for size 4: offsets -3..3
    torch.testing.assert_close(offset_table(table, 4), table)
    torch.testing.assert_close(offset_table(table, 2), table[2:5])  # offsets -1..1
    big = offset_table(table, 7)  # offsets -6..6: 13 entries
    assert big.shape == (13, 3)
    torch.testing.assert_close(big[[0, 6, 12]], table[[0, 3, 6]])  # ends and centre
    torch.testing.assert_close(big[1], table[0] + (table[1] - table[0]) * 0.5)


def test_block_on_a_smaller_input_uses_the_central_offsets():
    """pe_size 8 on a 5×6 input = a block made for 5×6 holding the cropped tables."""
    torch.manual_seed(2)
    big = randomized(LESABlock(16, num_heads=2, pe_size=8)).eval()
    small = LESABlock(16, num_heads=2, pe_size=(5, 6)).eval()
    state = big.state_dict()
    state['rel_height'] = big.rel_height[3:12]
    state['rel_width'] = big.rel_width[2:13]
    small.load_state_dict(state)
    x = torch.randn(1, 16, 5, 6)
    torch.testing.assert_close(big(x), small(x))


# --- the comparison arms, stride, channels, precision -------------------------------

def test_switches_unary_only_binary_only_and_fixed_sum():
    torch.manual_seed(3)
    x = torch.randn(2, 16, 5, 6)
    full = randomized(LESABlock(16, num_heads=2, pe_size=6)).eval()
    state = full.state_dict()
    conv = LESABlock(16, num_heads=2, pe_size=6, binary=False).eval()
    sa = LESABlock(16, num_heads=2, pe_size=6, unary=False).eval()
    add = LESABlock(16, num_heads=2, pe_size=6, fusion='sum').eval()
    for arm in (conv, sa, add):
        missing, unexpected = arm.load_state_dict(state, strict=False)
        assert not missing
    assert not hasattr(conv, 'qkv_transform') and not hasattr(sa, 'x_transform')
    assert not hasattr(add, 'reasoning') and not hasattr(sa, 'reasoning')
    terms = full.terms(x)
    assert terms['attention'].shape == (2, 2, 30, 30)
    torch.testing.assert_close(terms['output'], full(x))
    torch.testing.assert_close(conv(x), terms['unary'])
    torch.testing.assert_close(sa(x), terms['binary'])
    torch.testing.assert_close(add(x), terms['unary'] + terms['binary'])
    torch.testing.assert_close(full(x), terms['unary'] + terms['gate'] * terms['binary'])
    assert ((terms['gate'] > 0) & (terms['gate'] < 1)).all()


def test_stride_pools_and_channels_may_change():
    torch.manual_seed(4)
    block = LESABlock(16, out_channels=32, num_heads=4, pe_size=4, stride=2).eval()
    flat = LESABlock(16, out_channels=32, num_heads=4, pe_size=4).eval()
    flat.load_state_dict(block.state_dict())
    x = torch.randn(1, 16, 8, 6)
    out = block(x)
    assert out.shape == (1, 32, 4, 3)
    torch.testing.assert_close(out, F.avg_pool2d(flat(x), 2))
    # odd sizes: ⌈H/2⌉ as a strided 3×3 conv (the residual's downsample agrees)
    odd = torch.randn(1, 16, 7, 5)
    assert block(odd).shape[-2:] == torch.nn.Conv2d(16, 16, 3, 2, 1)(odd).shape[-2:]


def test_init_as_the_official_code():
    block = LESABlock(256, pe_size=16)
    std = block.qkv_transform.weight.std().item()
    assert abs(std - math.sqrt(1 / 256)) < 0.1 * math.sqrt(1 / 256)
    assert abs(block.rel_height.std().item() - 16 ** -0.5) < 0.15 * 16 ** -0.5
    cls = LESABlock(64, pe_type='classification', pe_size=7)
    assert abs(cls.relative.std().item() - math.sqrt(1 / 8)) < 0.1 * math.sqrt(1 / 8)
    assert torch.equal(block.bn_x.weight, torch.ones(256))


def test_gradcheck_double_precision():
    torch.manual_seed(5)
    block = randomized(LESABlock(8, num_heads=2, pe_size=2)).double().train()
    x = torch.randn(2, 8, 3, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: copy.deepcopy(block)(t), (x, ))


def test_bf16_autocast_stays_finite():
    torch.manual_seed(6)
    block = LESABlock(32, num_heads=4, pe_size=6).train()
    x = torch.randn(2, 32, 6, 7) * 100
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()


def test_with_cp_gives_the_same_output_and_gradients():
    torch.manual_seed(7)
    block = randomized(LESABlock(16, num_heads=2, pe_size=5)).train()
    ckpt = copy.deepcopy(block)
    ckpt.with_cp = True
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    a, b = block(x), ckpt(x)
    torch.testing.assert_close(a, b)
    (ga, ), (gb, ) = torch.autograd.grad(a.sum(), [x]), torch.autograd.grad(b.sum(), [x])
    torch.testing.assert_close(ga, gb)


def test_deformable_unary_term():
    pytest.importorskip('mmcv.ops')
    block = LESABlock(16, num_heads=2, pe_size=5, dcn=dict(type='DCN', deform_groups=1))
    offsets = [m for n, m in block.named_modules() if n.endswith('conv_offset')]
    assert offsets and all(torch.count_nonzero(m.weight) == 0 for m in offsets)
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    out = block.eval()(x)
    plain = LESABlock(16, num_heads=2, pe_size=5).eval()
    state = {k.replace('x_transform.0.weight', 'x_transform.0.weight'): v
             for k, v in block.state_dict().items() if 'conv_offset' not in k}
    plain.load_state_dict(state)
    # zero offsets: the deformable conv is the plain grouped 3×3
    torch.testing.assert_close(out, plain(x), atol=1e-5, rtol=1e-5)


# --- LESA-ResNets (mmdet, mmseg) and the detection configs ----------------------------

LESA_DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'lesa', 'mask-rcnn_*.py')))
#: built and run by test_lesa_htc_wrn50_config
LESA_HTC_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'lesa', 'htc_*.py')))


def _resnet(cls_name, **kwargs):
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(dict(dict(type=f'mmctx.{cls_name}', depth=50, base_channels=16,
                                      norm_cfg=dict(type='BN')), **kwargs))


def test_lesa_resnet_places_blocks_like_the_official_backbone():
    from mmdet.models.backbones.resnet import Bottleneck
    torch.manual_seed(8)
    net = _resnet('LESAResNet', lesa=dict(num_heads=4), pe_sizes=(None, None, 4, 2),
                  dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
                  stage_with_dcn=(False, True, True, True))
    net.eval()  # mmdet's ResNet.train returns None
    names = [n for n, _ in net.lesa_blocks()]
    assert names == [f'layer3.{i}.conv2' for i in range(1, 6)] + \
        [f'layer4.{i}.conv2' for i in range(3)]  # stage 3 keeps its first conv
    first = net.layer4[0]
    assert type(first) is Bottleneck and isinstance(first.norm2, torch.nn.Identity)
    assert first.conv2.stride == 2 and first.conv2.pe_size == (4, 4)  # 2 × stage size
    assert net.layer3[1].conv2.pe_size == (4, 4) and net.layer3[1].conv2.dcn is not None
    assert type(net.layer3[0].conv2).__name__ == 'DeformConv2dPack'  # kept, DCN
    keys = net.state_dict().keys()
    assert 'layer3.1.conv2.qkv_transform.weight' in keys and 'layer3.1.bn2.weight' not in keys
    # the upstream forward runs the block: conv1 -> LESA -> ReLU -> conv3, no norm2
    x = torch.randn(1, 128, 8, 8)  # layer3 input: 128 channels
    block = net.layer3[0]
    mid = block.relu(block.norm1(block.conv1(x)))
    b1 = net.layer3[1]
    y = block(x)
    expected = b1.relu(b1.norm3(b1.conv3(b1.relu(b1.conv2(b1.relu(b1.norm1(b1.conv1(y))))))) + y)
    torch.testing.assert_close(b1(y), expected)
    assert mid.shape[1] == 64
    outs = net(torch.randn(1, 3, 96, 80))
    assert [o.shape[-2:] for o in outs] == [(24, 20), (12, 10), (6, 5), (3, 3)]


def test_lesa_resnet_bad_arguments():
    with pytest.raises(ValueError, match='lesa_stages must be 4 bools'):
        _resnet('LESAResNet', lesa_stages=(True, ))
    with pytest.raises(ValueError, match=r"must not set \['in_channels'\]"):
        _resnet('LESAResNet', lesa=dict(in_channels=8))
    with pytest.raises(ValueError, match='cannot both be True'):
        _resnet('LESAResNet', with_cp=True, lesa=dict(with_cp=True))
    with pytest.raises(ValueError, match='pe_sizes must hold 4 entries'):
        _resnet('LESAResNet', pe_sizes=(1, 2))


def test_lesa_resnet_v1c_for_mmseg():
    from mmseg.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):
        net = MODELS.build(dict(type='mmctx.LESAResNetV1c', depth=50, base_channels=16,
                                stem_channels=16, norm_cfg=dict(type='BN'),
                                strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                                lesa=dict(num_heads=4)))
    net.eval()
    assert len(net.lesa_blocks()) == 5 + 3
    outs = net(torch.randn(1, 3, 64, 48))
    assert outs[-1].shape == (1, 512, 8, 6) and torch.isfinite(outs[-1]).all()


@pytest.mark.parametrize('path', LESA_DET_CONFIGS,
                         ids=[osp.basename(p) for p in LESA_DET_CONFIGS])
def test_lesa_detection_configs(path):
    from mmengine.config import Config

    from .test_det import build_detector, data_sample, small_test_cfg
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmdet' and cfg.custom_imports['imports'] == ['mmctx']
    resize = cfg.train_dataloader.dataset.pipeline[2]
    fixed = osp.basename(path).endswith('1024x1024.py')
    assert resize.scale == ((1024, 1024) if fixed else (1333, 800))
    assert resize.keep_ratio == (not fixed)
    assert cfg.optim_wrapper.optimizer.lr == 0.01 and cfg.train_cfg.max_epochs == 20
    assert cfg.train_dataloader.batch_size == 1
    model = build_detector(cfg, small_test_cfg(score_thr=0.)).eval()
    blocks = model.backbone.lesa_blocks()
    assert len(blocks) == 5 + 3 and all(b.with_cp and b.dcn for _, b in blocks)
    assert [b.pe_size for _, b in blocks] == [(64, 64)] * 5 + [(64, 64)] + [(32, 32)] * 2
    with torch.no_grad():  # any size: a small, non-square input
        (cls_score, _, mask_pred), = model(torch.randn(1, 3, 128, 160), [data_sample(128, 160)],
                                           mode='tensor')
    assert torch.isfinite(cls_score).all() and mask_pred.shape[1:] == (80, 28, 28)


def test_lesa_htc_wrn50_config():
    """HTC LESA-WRN-50 + DCN at the official 1280²: WRN-50-2 widths with ResNet keys,
    LESA tables for 80×80 / 40×40, the semantic branch; a loss step with a semantic map
    and a prediction at another small non-square size (tables cropped)."""
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.structures import InstanceData, PixelData

    from .test_det import build_detector, data_sample, small_test_cfg
    (path, ) = LESA_HTC_CONFIGS
    assert osp.basename(path) == 'htc_lesa-wrn50-dconv-c3-c5_fpn_4xb1-20e_coco-1280x1280.py'
    cfg = Config.fromfile(path)
    assert cfg.model.type == 'HybridTaskCascade' and cfg.model.roi_head.semantic_head
    resize = cfg.train_dataloader.dataset.pipeline[2]
    assert resize.scale == (1280, 1280) and not resize.keep_ratio
    assert cfg.train_dataloader.dataset.data_prefix.seg == 'stuffthingmaps/train2017/'
    assert cfg.optim_wrapper.optimizer.lr == 0.005 and cfg.train_cfg.max_epochs == 20
    assert cfg.auto_scale_lr.base_batch_size == 4
    torch.manual_seed(0)
    model = build_detector(cfg, small_test_cfg(score_thr=0.))
    bb = model.backbone
    # WRN-50-2: inner widths 128..1024, outputs 256..2048, ResNet-50 keys
    layers = [getattr(bb, n) for n in bb.res_layers]
    assert [layer[0].conv1.out_channels for layer in layers] == [128, 256, 512, 1024]
    assert [layer[0].conv3.out_channels for layer in layers] == [256, 512, 1024, 2048]
    assert [len(layer) for layer in layers] == [3, 4, 6, 3]
    assert bb.conv1.out_channels == 64 and layers[0][0].conv1.in_channels == 64  # stem
    blocks = bb.lesa_blocks()
    assert len(blocks) == 5 + 3 and all(b.with_cp and b.dcn for _, b in blocks)
    assert [b.pe_size for _, b in blocks] == [(80, 80)] * 6 + [(40, 40)] * 2
    assert blocks[0][1].in_channels == 512 and blocks[-1][1].in_channels == 1024
    # one training loss step with boxes, masks and a semantic map (96×128 input)
    h, w = 96, 128
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w), batch_input_shape=(h, w),
                                         scale_factor=(1., 1.)))
    from mmdet.structures.mask import BitmapMasks
    masks = torch.zeros(1, h, w, dtype=torch.uint8)
    masks[0, 8:40, 16:60] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[16., 8., 60., 40.]]),
                                       labels=torch.tensor([3]),
                                       masks=BitmapMasks(masks.numpy(), h, w))
    sample.gt_sem_seg = PixelData(sem_seg=torch.randint(0, 183, (1, h, w)))
    model.train()
    losses = model(torch.randn(1, 3, h, w), [sample], mode='loss')
    assert 'loss_semantic_seg' in losses
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in
                losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert blocks[0][1].qkv_transform.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (result, ) = model(torch.randn(1, 3, 128, 96), [data_sample(128, 96)], mode='predict')
    assert result.pred_instances.bboxes.shape[1] == 4
    assert torch.isfinite(result.pred_instances.scores).all()


def test_lesa_resnet_expansion_needs_a_bottleneck_resnet():
    with pytest.raises(ValueError, match='expansion needs a Bottleneck ResNet'):
        _resnet('LESAResNet', depth=18, expansion=2)
    with pytest.raises(TypeError, match='expansion must be an int'):
        _resnet('LESAResNet', expansion=2.0)


# --- mmpretrain: the ImageNet LESA-ResNet-50 / WRN-50 configs ------------------------

LESA_CLS_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'lesa', '*_in1k.py')))


@pytest.mark.parametrize('path', LESA_CLS_CONFIGS,
                         ids=[osp.basename(p) for p in LESA_CLS_CONFIGS])
def test_lesa_imagenet_configs(path):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    opt = cfg.optim_wrapper.optimizer
    assert (opt.lr, opt.weight_decay, opt.nesterov) == (0.05, 8e-5, True)
    assert cfg.train_cfg.max_epochs == 95 and cfg.auto_scale_lr.base_batch_size == 128
    assert [s.end for s in cfg.param_scheduler] == [5, 95]
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.eval()
    blocks = model.backbone.lesa_blocks()
    assert [n for n, _ in blocks] == [f'layer3.{i}.conv2' for i in range(1, 6)] + \
        [f'layer4.{i}.conv2' for i in range(3)]
    assert all(b.pe_type == 'classification' and b.pe_size == (14, 14) for _, b in blocks)
    wide = 'wrn' in osp.basename(path)
    assert blocks[0][1].in_channels == (512 if wide else 256)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match='tied to the feature-map size'):
        model(torch.randn(1, 3, 192, 192), mode='tensor')  # 12×12 at stage 3


def test_lesa_imagenet_train_and_test_on_tiny_imagenet(tmp_path):
    """tools/train.py (1 epoch) then tools/test.py on a tiny ImageNet in mmpretrain's
    layout (224 crops: the classification form needs its 14×14)."""
    from mmctx.testing import make_imagenet

    from .conftest import python, scalars
    root = make_imagenet(str(tmp_path / 'imagenet'), splits=dict(train=4, val=2))
    config = osp.join(ROOT, 'configs', 'lesa', 'lesa-resnet50_4xb32-95e_in1k.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', 'tiny_run.factor=1', f'tiny_run.data_root={root}']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any('accuracy/top1' in r for r in records)
    out = python('tools/test.py', config, osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
                 str(tmp_path / 'test'), *opts)
    assert 'accuracy/top1' in out.stdout + out.stderr


def test_lesa_head_trains_and_tests_on_tiny_cityscapes(tmp_path, tiny_cityscapes):
    """The LESA head config (R-50-D8, Cityscapes 512×1024) via tiny_run: 2 iterations of
    tools/train.py on the tiny Cityscapes layout, then tools/test.py on its checkpoint
    (the 2-D tables, made for 64×128, cropped to the tiny feature maps)."""
    from .conftest import python, scalars
    config = osp.join(ROOT, 'configs', 'lesa', 'lesa_r50-d8_4xb2-80k_cityscapes-512x1024.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', f'tiny_run.data_root={tiny_cityscapes}']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any('mIoU' in r for r in records)
    ckpt = sorted(glob.glob(osp.join(work_dir, 'iter_*.pth')))[-1]
    out = python('tools/test.py', config, ckpt, '--work-dir', str(tmp_path / 'test'), *opts)
    assert 'mIoU' in out.stdout + out.stderr


# --- official checkpoints: conversion, checked against a re-statement ----------------

class OfficialLESA(torch.nn.Module):
    """The official LESA module's parameters (names, shapes, the persistent
    ``flatten_index`` buffer) and its eval-mode equations, restated for this test from
    the paper / official equations (classification form)."""

    def __init__(self, c, size, groups=8):
        super().__init__()
        nn = torch.nn
        self.g, self.qk, self.v, self.L = groups, c // groups // 2, c // groups, size * size
        self.qkv_transform = nn.Conv1d(c, 2 * c, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * c)
        self.bn_similarity = nn.BatchNorm2d(3 * groups)
        self.bn_output = nn.BatchNorm1d(2 * c)
        self.x_transform = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=groups,
                                                   bias=False), nn.Conv2d(c, c, 1, bias=False))
        self.bn_x = nn.BatchNorm2d(c)
        self.reasoning = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * c, c, 1, bias=False),
                                       nn.BatchNorm2d(c), nn.ReLU())
        self.projection = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.relative = nn.Parameter(torch.randn(2 * self.qk + self.v, 2 * self.L - 1))
        i = torch.arange(self.L)
        self.register_buffer('flatten_index', (i.view(-1, 1) - i.view(1, -1)
                                               + self.L - 1).reshape(-1))

    def forward(self, x):
        n, c, h, w = x.shape
        g, dq, dv, L = self.g, self.qk, self.v, self.L
        qkv = self.bn_qkv(self.qkv_transform(x.reshape(n, c, L))).view(n, g, 2 * dq + dv, L)
        q, k, v = qkv[:, :, :dq], qkv[:, :, dq:2 * dq], qkv[:, :, 2 * dq:]
        emb = self.relative[:, self.flatten_index].view(-1, L, L)  # [c, i, j]: offset i-j
        logits = torch.cat([torch.einsum('ngci,ngcj->ngij', q, k),
                            torch.einsum('ngci,cij->ngij', q, emb[:dq]),
                            torch.einsum('ngcj,cji->ngij', k, emb[dq:2 * dq])], 1)
        a = self.bn_similarity(logits).view(n, 3, g, L, L).sum(1).softmax(-1)
        sv = torch.einsum('ngij,ngcj->ngci', a, v)
        sve = torch.einsum('ngij,cij->ngci', a, emb[2 * dq:])
        pairs = torch.stack([sv, sve], 3).reshape(n, 2 * c, L)  # (sv_m, sve_m) per channel
        binary = self.bn_output(pairs).view(n, c, 2, L).sum(2).view(n, c, h, w)
        unary = self.bn_x(self.x_transform(x))
        gate = torch.sigmoid(self.projection(self.reasoning(torch.cat([unary, binary], 1))))
        return unary + gate * binary


def official_lesa_resnet50():
    """The official classification network: a torchvision ResNet-50 with strides
    (1, 2, 2, 1) whose stage 3 (but its first block) and stage 4 Bottlenecks hold the LESA
    module as ``conv2`` and no ``bn2``."""
    import torchvision
    net = torchvision.models.resnet50(weights=None)
    first = net.layer4[0]
    first.conv2.stride, first.downsample[0].stride = (1, 1), (1, 1)
    for layer, start in ((net.layer3, 1), (net.layer4, 0)):
        for block in list(layer)[start:]:
            block.conv2 = OfficialLESA(block.conv2.in_channels, 14)
            block.bn2 = torch.nn.Identity()
    return net


def test_official_imagenet_checkpoint_converts_to_the_same_logits(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS

    from .conftest import python
    torch.manual_seed(9)
    official = randomized(official_lesa_resnet50(), seed=9).eval()
    with torch.no_grad():  # keep the logits in a sane range: small weights
        for p in official.parameters():
            p.mul_(0.2)
    # DataParallel-style keys, in the official {'net': ...} format
    src = tmp_path / 'lesa_resnet50.pth'
    torch.save({'net': {'module.' + k: v for k, v in official.state_dict().items()},
                'epoch': 95}, src)
    dst = tmp_path / 'mmctx.pth'
    out = python('tools/convert_upstream.py', str(src), str(dst)).stdout
    assert 'official LESA_classification checkpoint' in out
    assert "pe_type='classification' for 14x14" in out and 'ResNet-50 widths' in out
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'lesa', 'lesa-resnet50_4xb32-95e_in1k.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    load_checkpoint(model, str(dst), strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = official(x)
        got = model(x, mode='tensor')
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())

    # --backbone-only: the ImageNet backbone for a 2-D-table LESA backbone (ImageNet ->
    # COCO): no head, no classification embeddings; loads into mmdet's LESAResNet
    backbone = tmp_path / 'backbone.pth'
    out = python('tools/convert_upstream.py', str(src), str(backbone), '--backbone-only')
    keys = torch.load(backbone, weights_only=True)['state_dict'].keys()
    assert not any(k.startswith('fc.') or k.endswith(('.relative', '.flatten_index'))
                   for k in keys)
    net = _resnet('LESAResNet', base_channels=64, strides=(1, 2, 2, 1),
                  lesa=dict(num_heads=8), pe_sizes=(None, None, 14, 14))
    weights = torch.load(backbone, weights_only=True)['state_dict']
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and missing and all(k.endswith(('rel_height', 'rel_width'))
                                              for k in missing)
    # what transfers: the q·k BN channels and the Σ a·v output BN channels
    bn = official.layer3[1].conv2
    torch.testing.assert_close(net.layer3[1].conv2.bn_similarity.weight[:8],
                               bn.bn_similarity.weight[:8])
    assert torch.equal(net.layer3[1].conv2.bn_similarity.running_var[8:], torch.ones(8))
    torch.testing.assert_close(net.layer3[1].conv2.bn_output.running_mean,
                               bn.bn_output.running_mean[0::2])


def test_official_detection_checkpoint_loads_with_tables_of_another_size(tmp_path):
    """An official LESA_detection checkpoint keeps its keys; 2-D tables made for another
    input size (here 1280²: 80×80 at stage 3) are cropped to the config's when loading."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    from .conftest import python
    from .test_det import build_detector
    path = osp.join(ROOT, 'configs', 'lesa',
                    'mask-rcnn_lesa-r50-dconv-c3-c5_fpn_8xb1-20e_coco-1024x1024.py')
    cfg = Config.fromfile(path)
    cfg.model.backbone.pe_sizes = (320, 160, 80, 40)
    big = build_detector(cfg)
    state = big.state_dict()
    torch.save({'state_dict': state, 'meta': {'mmdet_version': '2.11.0'}},
               tmp_path / 'official.pth')
    out = python('tools/convert_upstream.py', str(tmp_path / 'official.pth'),
                 str(tmp_path / 'mmctx.pth')).stdout
    assert 'official LESA_detection checkpoint' in out and 'tables for 80x80' in out
    assert 'deformable unary 3x3' in out
    model = build_detector(Config.fromfile(path))
    load_checkpoint(model, str(tmp_path / 'mmctx.pth'), strict=True)
    table = model.backbone.layer3[1].conv2.rel_height
    assert table.shape == (127, table.shape[1])
    torch.testing.assert_close(table, state['backbone.layer3.1.conv2.rel_height'][16:143])


def test_convert_refuses_non_lesa_for_backbone_only(tmp_path):
    from .conftest import ROOT as root
    torch.save({'state_dict': {'decode_head.conv_seg.weight': torch.zeros(1)}},
               tmp_path / 'x.pth')
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, osp.join(root, 'tools', 'convert_upstream.py'),
                           str(tmp_path / 'x.pth'), str(tmp_path / 'y.pth'),
                           '--backbone-only'], capture_output=True, text=True)
    assert proc.returncode == 1 and '--backbone-only is for official LESA' in proc.stderr


# --- the analysis tools on LESA ------------------------------------------------------

def test_term_shares_and_query_independence_of_lesa():
    """Term shares: unary U vs gated binary g⊙B, by a hand computation from the terms;
    query independence reads the head-averaged attention."""
    from mmctx.analysis import query_independence, term_shares
    torch.manual_seed(10)
    block = randomized(LESABlock(16, num_heads=2, pe_size=6))
    model = torch.nn.Sequential(block).eval()  # the tools restore the model's own mode
    x = [torch.randn(1, 16, 6, 5) for _ in range(2)]
    (row, ) = term_shares(model, x)
    assert row['terms'] == ['unary', 'binary']
    norms = {'unary': [], 'binary': []}
    for xi in x:
        t = block.terms(xi)
        norms['unary'].append(t['unary'][0].flatten(1).norm(dim=0).mean())
        norms['binary'].append((t['gate'] * t['binary'])[0].flatten(1).norm(dim=0).mean())
    means = {k: float(torch.stack(v).double().mean()) for k, v in norms.items()}
    assert row['shares']['unary'] == pytest.approx(means['unary'] / sum(means.values()),
                                                   rel=1e-5)
    assert sum(row['shares'].values()) == pytest.approx(1.0)
    (qi, ) = query_independence(model, x, num_queries=8)
    assert qi['type'].startswith('LESABlock') and qi['cosine_distance'] > 0
    assert qi['residual'] is None and not qi['near_identity']  # not a residual block


def test_term_shares_report_lesa_gate_statistics(tmp_path):
    from mmctx.analysis import term_shares, write_term_shares
    torch.manual_seed(11)
    block = randomized(LESABlock(16, num_heads=2, pe_size=6))
    model = torch.nn.Sequential(block).eval()
    x = [torch.randn(1, 16, 6, 5) for _ in range(2)]
    (row, ) = term_shares(model, x)
    gate = torch.cat([block.terms(xi)['gate'].flatten() for xi in x]).double()
    assert row['gate']['mean'] == pytest.approx(float(gate.mean()), rel=1e-5)
    assert row['gate']['std'] == pytest.approx(float(gate.std(unbiased=False)), rel=1e-5)
    assert row['gate']['closed'] == pytest.approx(float((gate < 0.1).double().mean()))
    assert row['gate']['open'] == pytest.approx(float((gate > 0.9).double().mean()))
    own = torch.stack([torch.diagonal(block.terms(xi)['attention'][0], dim1=-2,
                                      dim2=-1).mean() for xi in x]).double().mean()
    assert row['own_attention']['mean'] == pytest.approx(float(own), rel=1e-5)
    assert row['own_attention']['chance'] == pytest.approx(1 / 30)
    md, _ = write_term_shares([row], str(tmp_path))
    text = open(md).read()
    assert 'LESA gates and own-position attention (ours)' in text
    assert f'| 0 | {row["gate"]["mean"]:.4f} |' in text


@pytest.mark.parametrize('pe_type', ['detection_qr', 'classification'])
def test_self_attention_arm_splits_into_own_and_other_positions(pe_type):
    """SA-only arm: B = s·(a_ii v_i) + s·(Σ_{j≠i} a_ij v_j) + BN shift, checked per
    element by a hand computation from the per-head attention."""
    from mmctx.analysis import term_contributions, term_shares
    torch.manual_seed(12)
    block = randomized(LESABlock(16, num_heads=2, pe_type=pe_type, pe_size=(4, 5),
                                 unary=False)).eval()
    x = torch.randn(2, 16, 4, 5)
    parts = term_contributions(block, x)
    assert list(parts) == ['own position', 'other positions']
    bn = block.bn_output
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    if pe_type == 'classification':
        shift = shift.view(-1, 2).sum(1)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(parts['own position'] + parts['other positions']
                                   + shift.view(1, -1, 1, 1), out, rtol=1e-4, atol=1e-5)
        attn = block.terms(x)['attention']  # (N, g, L, L)
        _, _, v = block.qkv(x)
    d, dv = block.qk_channels, block.v_channels
    for n, head, c, i in [(0, 0, 1, 3), (1, 1, 6, 17)]:
        ch = head * dv + c
        a_ii = attn[n, head, i, i]
        if pe_type == 'classification':  # both channels: a_ii v_i and a_ii r^v_0
            r0 = block.relative[2 * d + c, 20 - 1]
            expected = a_ii * (scale[2 * ch] * v[n, head, i, c] + scale[2 * ch + 1] * r0)
        else:
            expected = scale[ch] * a_ii * v[n, head, i, c]
        got = parts['own position'][n, ch].flatten()[i]
        assert float(got) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    (row, ) = term_shares(torch.nn.Sequential(block), [x[:1]])
    assert row['terms'] == ['own position', 'other positions'] and 'gate' not in row
    assert 0 < row['shares']['own position'] < 1


def test_lesa_mask_rcnn_trains_on_tiny_coco_with_tiny_run(tmp_path):
    """The official fixed-size LESA Mask R-CNN recipe, shrunk by tiny_run (1024² → 128²:
    the 2-D tables are cropped), 1 epoch of 2 iterations + CocoMetric via tools/train.py,
    then tools/test.py on the checkpoint."""
    from mmctx.testing import make_coco

    from .conftest import python, scalars
    root = make_coco(str(tmp_path / 'coco'), splits=dict(train=2, val=1), size=(96, 128))
    config = osp.join(ROOT, 'configs', 'lesa',
                      'mask-rcnn_lesa-r50-dconv-c3-c5_fpn_8xb1-20e_coco-1024x1024.py')
    work_dir = str(tmp_path / 'wd')
    opts = ['--cfg-options', f'tiny_run.data_root={root}', 'tiny_run.batch_size=1',
            'model.test_cfg.rpn.max_per_img=32', 'model.test_cfg.rcnn.max_per_img=10',
            'model.test_cfg.rcnn.score_thr=0.0']
    python('tools/train.py', config, '--work-dir', work_dir, *opts)
    records = scalars(work_dir)
    losses = [r for r in records if 'loss' in r]
    assert len(losses) == 2 and all(math.isfinite(r['loss']) for r in losses)
    assert any('coco/bbox_mAP' in r for r in records)
    out = python('tools/test.py', config, osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
                 str(tmp_path / 'test'), *opts)
    assert 'coco/bbox_mAP' in out.stdout + out.stderr


def test_lesa_in_context_neck():
    """The LESA neck: mmctx.ContextNeck runs the block on the chosen level only."""
    from mmctx.models.necks import ContextNeck
    torch.manual_seed(13)
    neck = ContextNeck([8, 32], dict(type='mmctx.LESABlock', pe_size=6), levels=(-1, ))
    neck.eval()
    feats = [torch.randn(1, 8, 10, 10), torch.randn(1, 32, 5, 7)]
    with torch.no_grad():
        out = neck(feats)
        assert out[0] is feats[0]
        torch.testing.assert_close(out[1], neck.blocks['1'](feats[1]))
    assert type(neck.blocks['1']).__name__ == 'LESABlock'
