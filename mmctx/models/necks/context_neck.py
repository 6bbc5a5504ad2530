"""Context blocks between a backbone and any upstream head or neck."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ...registry import MODELS
from ..blocks._base import build_block


@MODELS.register_module()
class ContextNeck(BaseModule):
    """Apply an mmctx block to chosen backbone levels; pass the others through.

    Usable as the ``neck`` of an mmseg segmentor or an mmdet detector. With
    ``follow`` it runs another neck afterwards (e.g. mmdet's FPN), so a detector can
    keep its FPN: ``neck=dict(type='mmctx.ContextNeck', in_channels=[256, 512, 1024,
    2048], levels=(3, ), block=dict(type='mmctx.GlobalContextBlock'),
    follow=dict(type='mmdet.FPN', ...))``.

    Args:
        in_channels: channels of every backbone level.
        block: the block config; ``in_channels`` and ``dim=2`` are filled in per level.
        levels: indices of the levels that get a block (each its own).
        follow: optional neck config run on the result.
    """

    def __init__(self, in_channels: Sequence[int], block: dict,
                 levels: Sequence[int] = (-1, ), follow: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if isinstance(in_channels, int) or not in_channels:
            raise TypeError(f'in_channels must be a non-empty list of ints, got {in_channels!r}')
        self.in_channels = list(in_channels)
        n = len(self.in_channels)
        if isinstance(levels, int) or not levels:
            raise TypeError(f'levels must be a non-empty list of level indices, got {levels!r}')
        resolved = []
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int) or not -n <= level < n:
                raise ValueError(f'levels must be indices into {n} backbone levels, got {level!r}')
            resolved.append(level % n)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f'levels has duplicates: {list(levels)}')
        self.levels = tuple(resolved)
        self.blocks = nn.ModuleDict({
            str(level): build_block(block, f'ContextNeck level {level}',
                                    in_channels=self.in_channels[level], dim=2)
            for level in self.levels})
        self.follow = MODELS.build(follow) if follow is not None else None

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'ContextNeck was built for {len(self.in_channels)} levels, '
                             f'got {len(inputs)}')
        got = [x.shape[1] if isinstance(x, torch.Tensor) and x.dim() > 1 else None
               for x in inputs]
        for level, (want, have) in enumerate(zip(self.in_channels, got)):
            if have is not None and have != want:
                raise ValueError(
                    f'ContextNeck level {level}: in_channels[{level}]={want}, but the '
                    f'backbone gives {have} channels there; the backbone\'s levels have '
                    f'{got} channels: set in_channels={got}')
        outs = tuple(self.blocks[str(i)](x) if str(i) in self.blocks else x
                     for i, x in enumerate(inputs))
        return self.follow(outs) if self.follow is not None else outs
