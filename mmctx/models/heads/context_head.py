"""One decode head for every context block."""
from typing import Optional

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.fcn_head import FCNHead

from ...registry import MODELS
from ..blocks._base import build_block, concat_conv


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
        block_channels: the width at which the block runs (default ``channels``):
            the convs up to ``block_after`` output it and the next conv maps it to
            ``channels`` — the wiring of heads whose block is wider than the head,
            e.g. mmseg's ``EMAHead`` (``ema_in_conv`` → 512 → EMA → ``bottleneck`` →
            256: ``block_channels=512, channels=256``).
        **kwargs: ``FCNHead`` arguments (``num_convs`` defaults to 2).
    """

    def __init__(self, block: dict, block_after: int = 0, num_convs: int = 2,
                 block_channels: Optional[int] = None, **kwargs) -> None:
        super().__init__(num_convs=num_convs, **kwargs)
        if isinstance(block_after, bool) or not isinstance(block_after, int) \
                or not 0 <= block_after < num_convs:
            raise ValueError(f'block_after must be an int in [0, {num_convs - 1}] '
                             f'(num_convs={num_convs}), got {block_after!r}')
        self.block_after = block_after
        width = self.channels if block_channels is None else block_channels
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise TypeError(f'block_channels must be None or an int >= 1, got '
                            f'{block_channels!r}')
        if width != self.channels:
            if block_after == num_convs - 1:
                raise ValueError(
                    f'block_channels={width} differs from channels={self.channels}: a '
                    f'conv must follow the block to map it back (block_after='
                    f'{block_after} is the last of num_convs={num_convs})')
            for i in range(block_after + 2):
                self.convs[i] = self._like(self.convs[i],
                                           width if i > 0 else self.in_channels,
                                           width if i <= block_after else self.channels)
        self.block_channels = width
        module = build_block(block, f'{type(self).__name__}.block (after conv {block_after})',
                             in_channels=width, dim=2)
        self.block_name = type(module)._abbr_
        self.add_module(self.block_name, module)

    def _like(self, conv: ConvModule, cin: int, cout: int) -> ConvModule:
        """A ConvModule as ``conv`` (kernel, padding, dilation, cfgs) for other widths."""
        c = conv.conv
        return ConvModule(cin, cout, kernel_size=c.kernel_size, padding=c.padding,
                          dilation=c.dilation, conv_cfg=self.conv_cfg,
                          norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

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
            feats = concat_conv(self.conv_cat, (x, feats))
        return feats
