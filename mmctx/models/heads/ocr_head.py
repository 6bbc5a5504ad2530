"""OCRNet's cascade head on mmctx's :class:`~mmctx.models.blocks.ObjectContextBlock`."""
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.cascade_decode_head import BaseCascadeDecodeHead

from ...registry import MODELS
from ..blocks._base import build_block


@MODELS.register_module()
class ObjectContextHead(BaseCascadeDecodeHead):
    """mmseg's ``OCRHead`` wiring with an mmctx ``ObjectContextBlock`` (``ocr_block``).

    ``forward(inputs, prev_output) = cls_seg(ocr_block(bottleneck(x), prev_output))``:
    a 3×3 conv+norm+act ``bottleneck`` (``in_channels`` → ``channels``), then the object
    context block in its cascade form, whose soft object regions are the previous
    head's logits, then dropout and the classifier.

    Why a head variant and not :class:`ContextHead`: OCRNet is a
    ``CascadeEncoderDecoder`` (``decode_head=[FCNHead, OCRHead]``): the second head
    takes the first head's prediction as a second input (``BaseCascadeDecodeHead``'s
    ``forward(inputs, prev_output)``, ``loss`` and ``predict``), which ``ContextHead``
    (an ``FCNHead``) cannot receive. Everything but the block is mmseg's
    (``bottleneck``, ``conv_seg``, the cascade loss / predict), so a released mmseg
    OCRNet checkpoint loads after renaming ``decode_head.1.object_context_block.*`` to
    ``decode_head.1.ocr_block.*`` (``tools/convert_upstream.py``; same logits, tested).

    Args:
        block: the block config, e.g. ``dict(type='mmctx.ObjectContextBlock',
            channels=256, norm_cfg=norm_cfg)`` (mmseg's ``ocr_channels`` is the block's
            ``channels``, its ``scale`` the block's ``scale``); ``in_channels``
            (= ``channels``), ``num_regions=None`` (the regions come from the previous
            head) and ``dim=2`` are filled in.
        **kwargs: ``BaseDecodeHead`` arguments.
    """

    def __init__(self, block: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bottleneck = ConvModule(self.in_channels, self.channels, 3, padding=1,
                                     conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                     act_cfg=self.act_cfg)
        module = build_block(block, f'{type(self).__name__}.block', in_channels=self.channels,
                             num_regions=None, dim=2)
        self.block_name = type(module)._abbr_
        self.add_module(self.block_name, module)

    @property
    def block(self):
        """The head's context block (as :attr:`ContextHead.block`)."""
        return getattr(self, self.block_name)

    def forward(self, inputs, prev_output):
        x = self._transform_inputs(inputs)
        return self.cls_seg(self.block(self.bottleneck(x), prev_output))
