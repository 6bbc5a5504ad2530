"""mmaction2's 3D ResNets with any mmctx block at their non-local positions."""
from typing import Any, List

from mmaction.models.backbones.resnet3d import ResNet3d
from mmaction.models.backbones.resnet3d_slowonly import ResNet3dSlowOnly

from ...registry import MODELS
from ..blocks._base import ContextBlockBase, build_block


class ContextNonLocalMixin:
    """Puts ``context_cfg`` where an mmaction2 3D ResNet puts its ``NonLocal3d``.

    mmaction2 hard-codes mmcv's ``NonLocal3d`` at the positions chosen by
    ``non_local`` (per-stage 0/1 tuples, e.g. ``((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1,
    0, 1), (0, 0, 0))`` for the I3D NL recipe). Mixed in front of any ``ResNet3d``
    subclass, this builds the same network and replaces each of those modules by
    ``context_cfg`` (any mmctx block; ``in_channels`` and ``dim=3`` are filled in).
    As upstream, the block runs after the residual add and ReLU of its Bottleneck3d,
    and keeps the module name ``non_local_block``.

    Args:
        context_cfg: the block config, e.g. ``dict(type='NonLocalBlock',
            sub_sample=True, norm_cfg=dict(type='BN3d'))``.
        *args, **kwargs: the host backbone's arguments, except ``non_local_cfg``;
            ``non_local`` must select at least one block.

    Note:
        ``ResNet3d.init_weights`` Kaiming-initialises every Conv3d (and sets BN γ=1),
        which undoes the zero-initialised output of mmcv's NonLocal3d. Here the
        blocks are re-initialised afterwards, so they start as designed (identity for
        NL/DNL-mmseg/GC/SNL).
    """

    def __init__(self, *args: Any, context_cfg: dict, **kwargs: Any) -> None:
        name = type(self).__name__
        if 'non_local_cfg' in kwargs:
            raise ValueError(f'{name} takes context_cfg (an mmctx block config) '
                             'instead of non_local_cfg')
        if not isinstance(context_cfg, dict) or 'type' not in context_cfg:
            raise TypeError(f'{name}: context_cfg must be a dict with a "type" key, '
                            f'got {context_cfg!r}')
        super().__init__(*args, **kwargs)
        self.context_cfg = dict(context_cfg)
        hosts = [m for m in self.modules()
                 if getattr(m, 'non_local', False) and hasattr(m, 'non_local_block')]
        if not hosts:
            raise ValueError(f'{name}: non_local={kwargs.get("non_local")!r} selects no '
                             'residual block, so context_cfg would be unused; mark the '
                             'blocks with 1, e.g. ((0, 0, 0), (0, 1, 0, 1), ...)')
        where = {m: n for n, m in self.named_modules()}
        for block in hosts:
            channels = block.non_local_block.in_channels
            block.non_local_block = build_block(
                self.context_cfg, f'{name} context_cfg at {where[block]}',
                in_channels=channels, dim=3)

    def context_blocks(self) -> List[ContextBlockBase]:
        return [m for m in self.modules() if isinstance(m, ContextBlockBase)]

    def init_weights(self) -> None:
        super().init_weights()
        for block in self.context_blocks():
            block.reset_parameters()


@MODELS.register_module()
class ContextResNet3d(ContextNonLocalMixin, ResNet3d):
    """mmaction2's ``ResNet3d`` (I3D, C2D) with mmctx blocks at the non-local
    positions; see :class:`ContextNonLocalMixin`."""


@MODELS.register_module()
class ContextResNet3dSlowOnly(ContextNonLocalMixin, ResNet3dSlowOnly):
    """mmaction2's ``ResNet3dSlowOnly`` (its stem and inflation defaults) with mmctx
    blocks at the non-local positions; see :class:`ContextNonLocalMixin`."""
