"""One decode head for every context block."""
import torch
from mmseg.models.decode_heads.fcn_head import FCNHead

from ...registry import MODELS
from ..blocks._base import build_block


@MODELS.register_module()
class ContextHead(FCNHead):
    """mmseg's FCN head with an mmctx context block between its convs.

    The wiring of mmseg's ``NLHead`` / ``DNLHead`` / ``GCHead``: ``conv → block →
    conv``, then (``concat_input``) concatenation with the head input and a conv,
    dropout and the classifier — for any mmctx block.

    Args:
        block: the block config, e.g. ``dict(type='mmctx.NonLocalBlock',
            norm_cfg=norm_cfg)``; ``in_channels`` (= ``channels``) and ``dim=2`` are
            filled in. The block is stored under its ``_abbr_`` (``nl_block``,
            ``dnl_block``, ``gc_block``, ...), the names mmseg's heads use.
        block_after: index of the conv after which the block runs (0: between the
            first and the second conv, as mmseg's heads).
        **kwargs: ``FCNHead`` arguments (``num_convs`` defaults to 2).
    """

    def __init__(self, block: dict, block_after: int = 0, num_convs: int = 2,
                 **kwargs) -> None:
        super().__init__(num_convs=num_convs, **kwargs)
        if isinstance(block_after, bool) or not isinstance(block_after, int) \
                or not 0 <= block_after < num_convs:
            raise ValueError(f'block_after must be an int in [0, {num_convs - 1}] '
                             f'(num_convs={num_convs}), got {block_after!r}')
        self.block_after = block_after
        module = build_block(block, f'{type(self).__name__}.block (after conv {block_after})',
                             in_channels=self.channels, dim=2)
        self.block_name = type(module)._abbr_
        self.add_module(self.block_name, module)

    @property
    def block(self) -> torch.nn.Module:
        return getattr(self, self.block_name)

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        feats = x
        for i, conv in enumerate(self.convs):
            feats = conv(feats)
            if i == self.block_after:
                feats = self.block(feats)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
