"""HamburgerBlock (NMF ham): invalid arguments, a re-statement of the MU equations,
parity with mmseg's ``Hamburger``, the one-step gradient, fp64 gradcheck, bf16."""
import pytest
import torch
import torch.nn.functional as F

from mmctx.models.blocks import hamburger as ham_module
from mmctx.models.blocks.hamburger import HamburgerBlock, NMFHam, random_bases
from mmctx.registry import MODELS

from .conftest import conv1x1

SHAPES = {1: (2, 8, 7), 2: (2, 8, 3, 5), 3: (2, 8, 2, 3, 4)}
EPS = 1e-6


# --- re-statements (written from the paper / REFERENCE-2 §A.7, not from the code) -------

def group_norm(x, m):
    n, c = x.shape[:2]
    g = x.reshape(n, m.num_groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True)
                                                    + m.eps)
    shape = [1, c] + [1] * (x.dim() - 2)
    return g.reshape(x.shape) * m.weight.view(shape) + m.bias.view(shape)


def mu_iterates(X, W, steps):
    """One sample: X (D, L) ≥ 0, W (D, R) > 0 → (W_K, H_K) after the softmax init and
    ``steps`` alternating MU steps (H first, then W)."""
    H = torch.softmax(X.T @ W, dim=1)  # (L, R), softmax over the R bases
    for _ in range(steps):
        H = H * (X.T @ W) / (H @ (W.T @ W) + EPS)
        W = W * (X @ H) / (W @ (H.T @ H) + EPS)
    return W, H


def nmf_reference(X, W, steps, one_step=False):
    """One sample's ham output W Hᵀ, H = the last coef update. ``one_step``: W_K and
    H_K are constants (the paper's one-step gradient)."""
    if one_step:
        with torch.no_grad():
            W, H = mu_iterates(X, W, steps)
    else:
        W, H = mu_iterates(X, W, steps)
    H = H * (X.T @ W) / (H @ (W.T @ W) + EPS)
    return W @ H.T, W, H


def ham_reference(x, bases, num_splits, steps, one_step=False):
    """(B, C, *S) → (B, C, *S); ``bases`` (B·S, D, R), split s of sample b at b·S + s."""
    b, c = x.shape[:2]
    d = c // num_splits
    out = torch.zeros_like(x).reshape(b, c, -1)
    flat = x.reshape(b, c, -1)
    for i in range(b):
        for s in range(num_splits):
            X = flat[i, s * d:(s + 1) * d]
            out[i, s * d:(s + 1) * d] = nmf_reference(X, bases[i * num_splits + s], steps,
                                                      one_step)[0]
    return out.reshape(x.shape)


def block_reference(block, x, bases, one_step=False):
    """ReLU(x + norm(conv_out(NMF(ReLU(conv_in(x))))))."""
    steps = block.ham.train_steps if block.training else block.ham.eval_steps
    h = torch.relu(conv1x1(x, block.ham_in.conv))
    h = ham_reference(h, bases, block.ham.num_splits, steps, one_step)
    h = conv1x1(h, block.ham_out.conv)
    if block.ham_out.with_norm:
        h = group_norm(h, block.ham_out.norm)
    return torch.relu(x + h)


def randomized(block, seed=0, scale=0.4):
    """Non-trivial weights everywhere (norm weights around 1, biases non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            shift = 1. if p.dim() == 1 and name.endswith('weight') else 0.
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale + shift)
    return block


def inject(block, bases):
    """Make the block's ham start from ``bases`` (B·S, D, R) on every call."""
    block.ham.initial_bases = lambda batch, device=None, dtype=None: bases.to(dtype)
    return block


def make(dim=2, **kw):
    kw.setdefault('num_bases', 3)
    kw.setdefault('norm_cfg', dict(type='GN', num_groups=2))
    return randomized(HamburgerBlock(8, dim=dim, **kw))


# --- arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, error, words', [
    (dict(num_splits=3), ValueError, 'num_splits=3 must divide'),
    (dict(ham_channels=6, num_splits=4), ValueError, 'must divide the ham channels (6)'),
    (dict(num_bases=0), ValueError, 'num_bases must be an int >= 1'),
    (dict(num_bases=2.), TypeError, 'num_bases must be an int'),
    (dict(train_steps=-1), ValueError, 'train_steps must be an int >= 0'),
    (dict(eval_steps=True), TypeError, 'eval_steps must be an int'),
    (dict(rand_init=1), TypeError, 'rand_init must be a bool'),
    (dict(one_step_grad='yes'), TypeError, 'one_step_grad must be a bool'),
    (dict(zero_init_out=0), TypeError, 'zero_init_out must be a bool'),
    (dict(norm_cfg=dict(type='GN', num_groups=32)), ValueError,
     'GN num_groups=32 must divide in_channels=8; divisors: [1, 2, 4, 8]'),
    (dict(norm_cfg=dict(type='GN')), TypeError, 'needs an int num_groups'),
    (dict(norm_cfg='GN'), TypeError, 'norm_cfg must be None or a dict'),
    (dict(dim=4), ValueError, 'dim must be one of [1, 2, 3]'),
    (dict(ham_channels=0), ValueError, 'ham_channels must be an int >= 1'),
])
def test_invalid_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        HamburgerBlock(8, **kwargs)
    assert words in str(info.value)


def test_invalid_inputs():
    block = HamburgerBlock(8, norm_cfg=None)
    with pytest.raises(ValueError, match=r'dim=2 and expects a 4D input'):
        block(torch.rand(1, 8, 5))
    with pytest.raises(ValueError, match='in_channels=8, got an input with 4'):
        block(torch.rand(1, 4, 3, 3))
    ham = NMFHam(8, num_splits=2, num_bases=3)
    with pytest.raises(TypeError, match='expects a torch.Tensor, got list'):
        ham([1.])
    with pytest.raises(ValueError,
                       match=r'expects \(B, C=8, \*spatial\), got shape \(1, 4, 3\)'):
        ham(torch.rand(1, 4, 3))
    with pytest.raises(ValueError, match='non-negative input'):
        ham(-torch.rand(1, 8, 3, 3))
    with pytest.raises(ValueError, match='non-negative input'):
        ham.decompose(torch.randn(2, 4, 9))
    with pytest.raises(ValueError, match=r'expects \(B·S, D=4, L\)'):
        ham.decompose(torch.rand(2, 8, 9))
    with pytest.raises(ValueError, match=r'must have shape \(2, 4, 3\)'):
        ham.decompose(torch.rand(2, 4, 9), torch.rand(2, 4, 5) + .1)
    with pytest.raises(ValueError, match='strictly positive'):
        ham.decompose(torch.rand(2, 4, 9), torch.zeros(2, 4, 3))


def test_nmf_input_is_non_negative_by_construction():
    """The block's NMF input is ReLU(ham_in(x)) (the sign check is skipped there): with
    biases that make most pre-activations negative, what the ham sees is still ≥ 0 and
    the ham's own sign check accepts it."""
    block = make()
    with torch.no_grad():
        block.ham_in.conv.bias.fill_(-1.)
    x = torch.randn(*SHAPES[2])
    assert (conv1x1(x, block.ham_in.conv) < 0).float().mean() > 0.5
    value = block.features(x)['value']
    assert value.min() >= 0 and value.max() > 0
    block.ham.decompose(value, check=True)  # no error


# --- the equations -----------------------------------------------------------------------

@pytest.mark.parametrize('dim', [1, 2, 3])
@pytest.mark.parametrize('train', [True, False])
def test_block_matches_restated_equations(dim, train):
    """Output and BPTT gradients (input, every parameter) against the re-statement,
    train (K = train_steps) and eval (K = eval_steps) with other step counts."""
    torch.manual_seed(dim)
    block = make(dim, train_steps=2, eval_steps=4).double().train(train)
    x = torch.randn(*SHAPES[dim], dtype=torch.double, requires_grad=True)
    bases = random_bases(2, 8, 3, dtype=torch.double)
    out = inject(block, bases)(x)
    expected = block_reference(block, x, bases)
    torch.testing.assert_close(out, expected)
    assert 0 < (out > 0).float().mean() < 1  # ReLU(x + ·) does not hide a constant
    w = torch.randn_like(out)
    params = [x] + list(block.parameters())
    got = torch.autograd.grad((out * w).sum(), params)
    want = torch.autograd.grad((expected * w).sum(), params)
    for g, e, name in zip(got, want, ['x'] + [n for n, _ in block.named_parameters()]):
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, e, msg=name)


def test_step_counts_and_splits():
    """Default 6 / 7 steps; S = 2 with other ham channels; train and eval differ."""
    torch.manual_seed(1)
    block = randomized(HamburgerBlock(8, ham_channels=12, num_splits=2, num_bases=4,
                                      norm_cfg=None)).double()
    assert (block.ham.train_steps, block.ham.eval_steps) == (6, 7)
    x = torch.randn(3, 8, 4, 5, dtype=torch.double)
    bases = random_bases(6, 6, 4, dtype=torch.double)
    inject(block, bases)
    outs = {}
    for train in (True, False):
        block.train(train)
        outs[train] = block(x)
        torch.testing.assert_close(outs[train], block_reference(block, x, bases))
    assert not torch.allclose(outs[True], outs[False])


def test_ham_alone_and_fixed_bases():
    """NMFHam.forward with given bases; ``rand_init=False`` uses its buffer, repeated
    over the batch; ``rand_init=True`` draws anew each call (so eval is random)."""
    torch.manual_seed(2)
    x = torch.rand(2, 6, 3, 4, dtype=torch.double)
    ham = NMFHam(6, num_splits=3, num_bases=2, rand_init=False).double().eval()
    want = ham_reference(x, ham.bases.repeat(2, 1, 1), 3, 7)
    torch.testing.assert_close(ham(x), want)
    torch.testing.assert_close(ham(x), want)  # deterministic, not updated
    given = random_bases(6, 2, 2, dtype=torch.double)
    torch.testing.assert_close(ham(x, given), ham_reference(x, given, 3, 7))
    rand = NMFHam(6, num_splits=3, num_bases=2).double().eval()
    assert not torch.allclose(rand(x), rand(x))
    assert 'bases' not in rand.state_dict() and 'bases' in ham.state_dict()


def test_bases_strictly_positive_and_normalised(monkeypatch):
    torch.manual_seed(0)
    b = random_bases(3, 5, 4)
    assert b.min() > 0
    torch.testing.assert_close(b.norm(dim=1), torch.ones(3, 4))
    # an exact 0 from torch.rand (possible: U[0, 1)) is lifted, not kept
    real_rand = torch.rand
    monkeypatch.setattr(torch, 'rand', lambda shape, **kw: real_rand(shape, **kw) * (
        torch.arange(shape[-1]) > 0))
    b = random_bases(2, 5, 4)
    assert b.min() > 0 and torch.isfinite(b).all()
    monkeypatch.undo()
    ham = NMFHam(4, num_bases=3, rand_init=False)
    before = ham.bases.clone()
    ham.reset_parameters()
    assert ham.bases.min() > 0 and not torch.equal(before, ham.bases)
    torch.testing.assert_close(ham.bases.norm(dim=1), torch.ones(1, 3))


def test_effective_map_and_assignments():
    """distribute = coef, gather = coefᵀ over Σ_j coef (our choice), M = their product;
    forward_with_attention returns forward's output."""
    torch.manual_seed(3)
    block = make().double().eval()
    x = torch.randn(*SHAPES[2], dtype=torch.double)
    bases = random_bases(2, 8, 3, dtype=torch.double)
    inject(block, bases)
    out, maps = block.forward_with_attention(x)
    torch.testing.assert_close(out, block(x))
    a = block.assignments(x)
    value = torch.relu(conv1x1(x, block.ham_in.conv)).reshape(2, 8, -1)
    for i in range(2):
        _, _, H = nmf_reference(value[i], bases[i], block.ham.eval_steps)
        G = (H / (H.sum(0) + EPS)).T
        torch.testing.assert_close(a['distribute'][i], H)
        torch.testing.assert_close(a['gather'][i], G)
        torch.testing.assert_close(maps['pairwise'][i], H @ G)


# --- mmseg -------------------------------------------------------------------------------

def mmseg_pair(num_splits=1, rand_init=True, norm=True):
    from mmseg.models.decode_heads.ham_head import Hamburger
    norm_cfg = dict(type='GN', num_groups=4, requires_grad=True) if norm else None
    theirs = Hamburger(8, dict(MD_S=num_splits, MD_R=4, train_steps=3, eval_steps=5,
                               rand_init=rand_init), norm_cfg=norm_cfg)
    randomized(theirs)
    ours = HamburgerBlock(8, num_splits=num_splits, num_bases=4, train_steps=3,
                          eval_steps=5, rand_init=rand_init, norm_cfg=norm_cfg)
    return theirs, ours


@pytest.mark.parametrize('num_splits, norm', [(1, True), (2, False)])
@pytest.mark.parametrize('train', [True, False])
def test_matches_mmseg_hamburger(num_splits, norm, train):
    """Copied weights (keys 1:1, strict), the same random bases (the same seed):
    outputs and BPTT gradients w.r.t. the input and every weight."""
    theirs, ours = mmseg_pair(num_splits, norm=norm)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.train(train), ours.train(train)
    x = torch.randn(2, 8, 5, 6)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    w = torch.randn(2, 8, 5, 6)
    outs, grads = [], []
    for m, xi in zip((theirs, ours), xs):
        torch.manual_seed(7)
        out = m(xi)
        outs.append(out)
        grads.append(torch.autograd.grad((out * w).sum(), [xi] + list(m.parameters())))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    names = ['x'] + [n for n, _ in ours.named_parameters()]
    assert names[1:] == [n for n, _ in theirs.named_parameters()]
    for g_ours, g_theirs, name in zip(grads[1], grads[0], names):
        assert g_theirs.abs().sum() > 0, name
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-3, atol=1e-5, msg=name)
    torch.manual_seed(8)  # other bases → another output (the draw matters)
    assert not torch.allclose(ours(x), outs[1], atol=1e-4)


def test_mmseg_fixed_bases_checkpoint_loads():
    """mmseg's ``rand_init=False`` buffer (registered on its first forward) is ``ham.bases``
    here too: the checkpoint loads strictly and eval outputs agree."""
    theirs, ours = mmseg_pair(rand_init=False)
    theirs.eval(), ours.eval()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        theirs(x)
    sd = theirs.state_dict()
    assert 'ham.bases' in sd
    ours.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


# --- gradients ---------------------------------------------------------------------------

def test_one_step_gradient():
    """``one_step_grad``: the same output; the gradient is that of the last coef update
    with W_K, H_K constants — and not BPTT's."""
    torch.manual_seed(4)
    one = make(train_steps=3, one_step_grad=True).double().train()
    bptt = make(train_steps=3).double().train()
    bptt.load_state_dict(one.state_dict())
    bases = random_bases(2, 8, 3, dtype=torch.double)
    inject(one, bases), inject(bptt, bases)
    x = torch.randn(*SHAPES[2], dtype=torch.double)
    w = torch.randn(*SHAPES[2], dtype=torch.double)
    results = {}
    for name, m, one_step in (('one', one, True), ('bptt', bptt, False),
                              ('ref', one, True)):
        xi = x.clone().requires_grad_()
        out = block_reference(m, xi, bases, one_step) if name == 'ref' else m(xi)
        grads = torch.autograd.grad((out * w).sum(), [xi] + list(m.parameters()))
        results[name] = (out, grads)
    torch.testing.assert_close(results['one'][0], results['bptt'][0])
    for g, e in zip(results['one'][1], results['ref'][1]):
        torch.testing.assert_close(g, e)
    assert not torch.allclose(results['one'][1][0], results['bptt'][1][0], rtol=1e-3)


def test_gradcheck():
    """fp64 gradcheck through the MU steps (BPTT, deterministic bases): the input and
    the ham_in / ham_out weights. (The one-step gradient is not the true gradient by
    design: :func:`test_one_step_gradient`.)"""
    torch.manual_seed(5)
    block = randomized(HamburgerBlock(4, num_bases=2, train_steps=2, rand_init=False,
                                      norm_cfg=dict(type='GN', num_groups=2))).double()
    x = torch.randn(1, 4, 2, 3, dtype=torch.double, requires_grad=True)
    names = ['ham_in.conv.weight', 'ham_out.conv.weight']
    params = {n: p for n, p in block.named_parameters()}

    def f(x, w_in, w_out):
        return torch.func.functional_call(
            block, {**params, names[0]: w_in, names[1]: w_out}, (x,))

    inputs = (x, *(params[n].detach().clone().requires_grad_() for n in names))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_bf16_autocast_loop_in_fp32(monkeypatch):
    seen = []
    real = NMFHam.update_bases

    def spy(x, bases, coef):
        seen.append((x.dtype, bases.dtype, coef.dtype, torch.is_autocast_enabled('cpu')))
        return real(x, bases, coef)

    monkeypatch.setattr(NMFHam, 'update_bases', staticmethod(spy))
    torch.manual_seed(6)
    block = make(rand_init=False).train()
    x = torch.randn(2, 8, 6, 7) * 30
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    assert len(seen) == block.ham.train_steps
    assert all(s == (torch.float32,) * 3 + (False,) for s in seen)
    ref = block(x)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


# --- registry, defaults, init ------------------------------------------------------------

def test_registry_build_with_only_in_channels():
    block = MODELS.build(dict(type='mmctx.HamburgerBlock', in_channels=64))
    assert isinstance(block, HamburgerBlock) and block._abbr_ == 'ham_block'
    ham = block.ham
    assert (block.ham_channels, ham.num_splits, ham.num_bases, ham.train_steps,
            ham.eval_steps, ham.rand_init, ham.one_step_grad) == (64, 1, 64, 6, 7, True,
                                                                  False)
    assert isinstance(block.ham_out.norm, torch.nn.GroupNorm)
    assert block.ham_out.norm.num_groups == 32 and block.ham_out.conv.bias is None
    # default GN adapts to channels 32 does not divide; written-out GN does not
    assert MODELS.build(dict(type='mmctx.HamburgerBlock', in_channels=48)
                        ).ham_out.norm.num_groups == 24
    assert HamburgerBlock(5, dim=1).ham_out.norm.num_groups == 5
    with pytest.raises(ValueError, match='num_groups=32 must divide in_channels=48'):
        MODELS.build(dict(type='mmctx.HamburgerBlock', in_channels=48,
                          norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))
    assert ham_module.DEFAULT_NORM['num_groups'] == 32  # the default was not mutated


def test_bn_norm_ranks_and_bias():
    assert isinstance(HamburgerBlock(8, norm_cfg=dict(type='BN'), dim=3).ham_out.bn,
                      torch.nn.BatchNorm3d)
    block = HamburgerBlock(8, norm_cfg=None, dim=1)
    assert block.ham_out.norm is None and block.ham_out.conv.bias is not None


def test_init_and_zero_init_out():
    torch.manual_seed(0)
    block = HamburgerBlock(64, norm_cfg=None)
    assert block.ham_in.conv.bias.abs().sum() == 0
    std = block.ham_in.conv.weight.std().item()
    assert abs(std - (2 / 64) ** .5) < 0.2 * (2 / 64) ** .5  # Kaiming fan-out
    zero = randomized(HamburgerBlock(8, zero_init_out=True, norm_cfg=None))
    zero.reset_parameters()
    x = torch.randn(*SHAPES[2])
    torch.testing.assert_close(zero(x), torch.relu(x))
    assert not torch.allclose(make()(x), torch.relu(x))
