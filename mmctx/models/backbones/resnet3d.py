"""mmaction2's ResNet3d with any mmctx block at its non-local positions."""
from typing import Any

from mmaction.models.backbones.resnet3d import ResNet3d

from ...registry import MODELS
from ..blocks._base import ContextBlockBase, build_block


@MODELS.register_module()
class ContextResNet3d(ResNet3d):
    """mmaction2's ``ResNet3d`` where the non-local positions hold an mmctx block.

    mmaction2 hard-codes mmcv's ``NonLocal3d`` at the positions chosen by
    ``non_local`` (per-stage 0/1 tuples, e.g. ``((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1,
    0, 1), (0, 0, 0))`` for the I3D NL recipe). This subclass builds the same network
    and replaces each of those modules by ``context_cfg`` (any mmctx block;
    ``in_channels`` and ``dim=3`` are filled in). As upstream, the block runs after
    the residual add and ReLU of its Bottleneck3d, and keeps the module name
    ``non_local_block``.

    Args:
        context_cfg: the block config, e.g. ``dict(type='NonLocalBlock',
            sub_sample=True, norm_cfg=dict(type='BN3d'))``.
        *args, **kwargs: ``ResNet3d``'s arguments, except ``non_local_cfg``.

    Note:
        ``ResNet3d.init_weights`` Kaiming-initialises every Conv3d (and sets BN γ=1),
        which undoes the zero-initialised output of mmcv's NonLocal3d. Here the
        blocks are re-initialised afterwards, so they start as designed (identity for
        NL/DNL-mmseg/GC/SNL).
    """

    def __init__(self, *args: Any, context_cfg: dict, **kwargs: Any) -> None:
        if 'non_local_cfg' in kwargs:
            raise ValueError('ContextResNet3d takes context_cfg (an mmctx block config) '
                             'instead of non_local_cfg')
        super().__init__(*args, **kwargs)
        self.context_cfg = dict(context_cfg)
        for block in self.modules():
            if getattr(block, 'non_local', False) and hasattr(block, 'non_local_block'):
                channels = block.non_local_block.in_channels
                block.non_local_block = build_block(
                    dict(self.context_cfg, in_channels=channels, dim=3))

    def context_blocks(self):
        return [m for m in self.modules() if isinstance(m, ContextBlockBase)]

    def init_weights(self) -> None:
        super().init_weights()
        for block in self.context_blocks():
            block.reset_parameters()
