"""The registered blocks as the export tests build them (tests/test_onnx_export.py,
tests/test_compile.py): every type at least once, 16 channels, random weights, eval."""
import torch
import torch.nn as nn

from mmctx.deploy import block_types, build_block_for_export, random_weights

C = 16
#: the example input: odd sizes, >= 9 so that ISA (P = 8) has two groups per axis
SHAPE = (2, C, 9, 11)
#: (id, type, kwargs, dynamic): every registered block type at least once, with the
#: defaults its configs use; ``dynamic`` is whether it can be exported with a dynamic
#: size (tests/test_onnx_export.py's REFUSED says why not)
BLOCKS = [
    ('nl', 'NonLocalBlock', {}, True),  # fused attention (scaled_dot_product_attention)
    ('nl-concatenation', 'NonLocalBlock', dict(mode='concatenation'), True),  # chunked
    ('nl-dot_product-sub_sample', 'NonLocalBlock',
     dict(mode='dot_product', sub_sample=True), True),
    ('dnl', 'DisentangledNonLocalBlock', {}, True),
    ('dnl-official_det', 'DisentangledNonLocalBlock', dict(preset='official_det'), True),
    ('pairwise', 'PairwiseNonLocalBlock', {}, True),
    ('unary', 'UnaryNonLocalBlock', {}, True),
    ('gc', 'GlobalContextBlock', dict(fusion_types=('channel_add', 'channel_mul')), True),
    ('snl', 'SimplifiedNonLocalBlock', {}, True),
    ('se', 'SqueezeExcitationBlock', {}, True),
    ('lesa', 'LESABlock', dict(pe_size=16), True),  # dynamic: H, W <= pe_size
    ('a2', 'DoubleAttentionBlock', {}, True),
    ('ema', 'EMABlock', {}, True),  # the EM loop
    ('glore', 'GloReBlock', {}, True),
    ('latentgnn', 'LatentGNNBlock', {}, True),
    ('cgnl', 'CGNLBlock', {}, True),
    ('ham', 'HamburgerBlock', dict(rand_init=False), True),  # the NMF loop, fixed bases
    ('cc', 'CrissCrossBlock', dict(recurrence=2), True),
    ('da', 'DualAttentionBlock', {}, True),
    ('isa', 'InterlacedSparseBlock', {}, True),  # dynamic: H, W > down_factor
    ('ann', 'AsymmetricNonLocalBlock', {}, False),  # adaptive pooling
    ('ocr', 'ObjectContextBlock', {}, True),
    ('psa', 'PointwiseSpatialBlock', {}, False),  # mmseg: map size by parity of H, W
    ('apc', 'AdaptiveContextBlock', {}, False),  # adaptive pooling
    ('gcu', 'GraphUnitBlock', {}, True),
    ('dgmn', 'DynamicGraphBlock', {}, True),  # deformable sampling in plain PyTorch
    ('lr', 'LocalRelationBlock', {}, True),  # chunked
]
IDS = [b[0] for b in BLOCKS]
#: a chunk size (elements) that splits the local relation's 9 rows into chunks of one
LR_ONE_ROW = 2 * C * 49 * 11


def covers_every_block() -> bool:
    return set(block_types()) == {b[1] for b in BLOCKS}


def block(type_: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """The block in eval mode with random weights (no zero-initialised layer hides its
    context path)."""
    return random_weights(build_block_for_export(type_, C, **kwargs), seed=seed)


def example(shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def name(id_: str) -> str:
    return id_.replace('-', '_')


class Together(nn.Module):
    """Blocks side by side on one input, their outputs concatenated on channels.

    One graph for all blocks: exporting or compiling costs ~1 s (ONNX) to ~5 s (inductor)
    per graph on top of its size, so the tests export and compile the blocks together
    and compare the output block by block (:meth:`split`). A failing export names the
    block's path (``blocks.<id>``), a failing comparison the block's id.
    """

    def __init__(self, entries) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({name(e[0]): block(*e[1:3]) for e in entries})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.blocks.values()], dim=1)

    def split(self, out: torch.Tensor) -> dict:
        return dict(zip(self.blocks, out.split(C, dim=1)))


def relative_differences(model: Together, got: torch.Tensor, expected: torch.Tensor,
                         x: torch.Tensor) -> dict:
    """``{id: max|got − expected| / max|expected|}`` per block; asserts that no block's
    output is its input (random weights: the context path is not the identity)."""
    out = {}
    for (key, e), g in zip(model.split(expected).items(), model.split(got).values()):
        assert not torch.allclose(e, x, atol=1e-3), f'{key} is the identity'
        out[key] = ((g - e).abs().max() / e.abs().max()).item()
    return out
