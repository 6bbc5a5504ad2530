"""APCNet's decode head on mmctx's :class:`~mmctx.models.blocks.AdaptiveContextBlock`."""
from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from ...registry import MODELS
from ..blocks._base import build_block


@MODELS.register_module()
class AdaptiveContextHead(BaseDecodeHead):
    """mmseg's ``APCHead`` wiring with an mmctx ``AdaptiveContextBlock`` (``apc_block``):
    ``forward(inputs) = cls_seg(apc_block(x))``.

    Why a head variant and not :class:`ContextHead`: ``APCHead`` runs its adaptive
    context modules directly on the backbone features (no conv before them) and fuses
    ``[x; ACM_s(x) …]`` with one 3×3 ``bottleneck`` to ``channels``; ``ContextHead``
    always puts at least one conv before its block and keeps the block's width. Here the
    block owns the ACMs and the bottleneck (its ``out_channels`` is the head's
    ``channels``), and the head is only ``BaseDecodeHead``'s input transform, dropout and
    classifier, so a released mmseg APCNet checkpoint loads after renaming
    ``decode_head.acm_modules.*`` / ``decode_head.bottleneck.*`` to
    ``decode_head.apc_block.acm_modules.*`` / ``decode_head.apc_block.bottleneck.*``
    (``tools/convert_upstream.py``; same logits, tested).

    Args:
        block: the block config, e.g. ``dict(type='mmctx.AdaptiveContextBlock',
            channels=512, pool_scales=(1, 2, 3, 6), norm_cfg=norm_cfg)``;
            ``in_channels`` (the head's), ``out_channels`` (= ``channels``) and
            ``dim=2`` are filled in.
        **kwargs: ``BaseDecodeHead`` arguments.
    """

    def __init__(self, block: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise TypeError(f'{type(self).__name__} takes one input level (in_channels an '
                            f'int, input_transform=None), got in_channels={self.in_channels!r}')
        module = build_block(block, f'{type(self).__name__}.block',
                             in_channels=self.in_channels, out_channels=self.channels, dim=2)
        self.block_name = type(module)._abbr_
        self.add_module(self.block_name, module)

    @property
    def block(self):
        """The head's context block (as :attr:`ContextHead.block`)."""
        return getattr(self, self.block_name)

    def forward(self, inputs):
        return self.cls_seg(self.block(self._transform_inputs(inputs)))
