"""ANN's two-input decode head on mmctx's :class:`~mmctx.models.blocks.AsymmetricNonLocalBlock`."""
from typing import List, Sequence

import torch
from mmseg.models.decode_heads.ann_head import ANNHead

from ...registry import MODELS
from ..blocks.asymmetric_non_local import AsymmetricNonLocalBlock


@MODELS.register_module()
class AsymmetricNonLocalHead(ANNHead):
    """mmseg's ``ANNHead`` with its ``AFNB`` / ``APNB`` replaced by two mmctx
    ``AsymmetricNonLocalBlock``\\ s under mmseg's names:

    ``fusion = AsymmetricNonLocalBlock(C_high, key_in_channels=C_low)`` (AFNB: queries
    from the high-level input, keys/values from the low-level one) → dropout →
    ``bottleneck`` (mmseg's 3×3 ConvModule ``C_high → channels``) → ``context =
    AsymmetricNonLocalBlock(channels)`` (APNB) → dropout → ``conv_seg``.

    Why a head variant and not :class:`ContextHead`: ANN fuses **two** backbone
    levels (``in_channels=[C_low, C_high]``, ``input_transform='multiple_select'``)
    in a block that takes both, and runs a second block after a conv; ``ContextHead``
    has one input and one block. Everything but the two blocks is mmseg's
    ``ANNHead`` (``bottleneck``, ``dropout``, ``conv_seg``, losses, ``predict``); the
    blocks keep mmseg's parameter names, so a released mmseg ANN checkpoint loads as it
    is (``tools/convert_upstream.py`` recognises it and changes no key; same logits,
    tested), and the attention runs on mmctx's memory-efficient core.

    Args:
        project_channels: query/key/value width of both blocks (mmseg: 256).
        query_scales: the blocks' query scales (one stage each, summed).
        key_pool_scales: the pyramid of pooled keys/values.
        **kwargs: ``ANNHead`` / ``BaseDecodeHead`` arguments; ``norm_cfg`` and
            ``act_cfg`` are the blocks' too. ``conv_cfg`` must be ``None`` (the blocks'
            convs are plain convolutions).
    """

    def __init__(self, project_channels: int, query_scales: Sequence[int] = (1, ),
                 key_pool_scales: Sequence[int] = (1, 3, 6, 8), **kwargs) -> None:
        super().__init__(project_channels=project_channels, query_scales=query_scales,
                         key_pool_scales=key_pool_scales, **kwargs)
        if self.conv_cfg is not None:
            raise ValueError(f'{type(self).__name__} builds its blocks with plain '
                             f'convolutions; conv_cfg must be None, got {self.conv_cfg!r}')
        low_in_channels, high_in_channels = self.in_channels
        common = dict(project_channels=project_channels, query_scales=tuple(query_scales),
                      key_pool_scales=tuple(key_pool_scales), norm_cfg=self.norm_cfg,
                      act_cfg=self.act_cfg, dim=2)
        # mmseg's AFNB / APNB are replaced under the same names
        self.fusion = AsymmetricNonLocalBlock(high_in_channels,
                                              key_in_channels=low_in_channels, **common)
        self.context = AsymmetricNonLocalBlock(self.channels, **common)

    @property
    def block(self) -> AsymmetricNonLocalBlock:
        """The APNB (``context``): the block at the head's width."""
        return self.context

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        low_feats, high_feats = self._transform_inputs(inputs)
        output = self.fusion(high_feats, low_feats)  # queries: high, keys: low
        if self.dropout is not None:  # None for dropout_ratio=0 (mmseg's head fails)
            output = self.dropout(output)
        output = self.bottleneck(output)
        return self.cls_seg(self.context(output))
