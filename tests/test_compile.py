"""torch.compile: every registered block traces into one graph (no graph break, eval and
training mode), its compiled forward equals eager (AOT-autograd tracing for every block,
the inductor CPU backend for one entry of each kind of code path)."""
import pytest
import torch

from mmctx.models.blocks import attention

from .helpers.export_blocks import (BLOCKS, IDS, LR_ONE_ROW, Together, block,
                                    covers_every_block, example, name,
                                    relative_differences)

#: compiled vs eager, ``max|compiled − eager| / max|eager|``
RTOL = 1e-5
#: inductor is slow to compile on 2 cores (~150 s for all 27 entries in one graph): one
#: entry per kind of code path (fused attention, chunk loops, iterative EM / NMF, axis-
#: wise criss-cross, strided views, relative-position gathers, unfold, sampling grids,
#: group permutes); the others run under AOT autograd (the same graph capture and
#: decompositions, eager kernels)
INDUCTOR = ('nl', 'nl-concatenation', 'ema', 'ham', 'cc', 'psa', 'lesa', 'lr', 'dgmn', 'isa')


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_table_covers_every_registered_block():
    assert covers_every_block() and set(INDUCTOR) <= set(IDS)


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('type_, kwargs', [b[1:3] for b in BLOCKS] + [
    ('HamburgerBlock', {}),  # new random bases every forward (rand_init=True)
    ('NonLocalBlock', dict(mode='concatenation', chunk=True)),
    ('LocalRelationBlock', dict(chunk_elements=LR_ONE_ROW))],
    ids=IDS + ['ham-rand_init', 'nl-concatenation-chunked', 'lr-chunked'])
def test_no_graph_break(monkeypatch, type_, kwargs, training):
    """In training mode the chunked paths recompute each chunk in backward
    (activation checkpointing), EMA updates its bases, BN uses batch statistics."""
    kwargs = dict(kwargs)
    if kwargs.pop('chunk', False):
        monkeypatch.setattr(attention, 'CHUNK_ELEMENTS', 2 * 9 * 11 * 7)  # 14 chunks
    model = block(type_, kwargs).train(training)
    x = example().requires_grad_(training)
    explanation = torch._dynamo.explain(model)(x)
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize('type_, kwargs', [b[1:3] for b in BLOCKS if b[0] not in INDUCTOR],
                         ids=[b[0] for b in BLOCKS if b[0] not in INDUCTOR])
def test_aot_eager_matches_eager(type_, kwargs):
    model, x = block(type_, kwargs), example()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        expected, got = model(x), compiled(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= RTOL


def test_aot_eager_random_bases_match_eager():
    """Hamburger's default draws new bases every forward: the same draws under the same
    seed (AOT autograd calls the same RNG in the same order)."""
    model, x = block('HamburgerBlock', {}), example()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        got = compiled(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= RTOL


def test_inductor_matches_eager(monkeypatch):
    """One graph (``fullgraph=True``: a graph break is an error), the chunked NL path
    forced to several chunks."""
    monkeypatch.setattr(attention, 'CHUNK_ELEMENTS', 2 * 9 * 11 * 7)  # 14 chunks of 7
    model = Together([b for b in BLOCKS if b[0] in INDUCTOR]).eval()
    x = example()
    compiled = torch.compile(model, backend='inductor', fullgraph=True)
    with torch.no_grad():
        expected, got = model(x), compiled(x)
    worst = relative_differences(model, got, expected, x)
    assert set(worst) == {name(i) for i in INDUCTOR}
    bad = {k: v for k, v in worst.items() if not v <= RTOL}
    assert not bad, f'inductor differs from eager by more than {RTOL} (relative): {bad}'
