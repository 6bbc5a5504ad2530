"""PSANet's decode head on mmctx's :class:`~mmctx.models.blocks.PointwiseSpatialBlock`."""
from typing import Optional, Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from ...registry import MODELS
from ..blocks._base import build_block, concat_conv


@MODELS.register_module()
class PointwiseSpatialHead(BaseDecodeHead):
    """mmseg's ``PSAHead`` wiring with the attention in one mmctx block (``psa_block``):
    ``conv_seg(dropout(bottleneck(cat[x, psa_block(x)])))``, ``bottleneck`` a 3×3
    ``ConvModule`` ``2·in_channels → channels``.

    Why a head variant and not :class:`ContextHead`: PSANet's block runs on the head
    input itself, at ``in_channels`` (its two ``reduce`` convs are part of it, one per
    branch), and the only conv after it takes ``cat[x, block(x)]``; ``ContextHead``
    runs its block after a first conv and concatenates the input only after the whole
    conv chain (``conv_cat``), and an ``FCNHead`` without convs needs
    ``in_channels == channels``. Subclassing ``BaseDecodeHead`` rather than
    ``PSAHead``: ``PSAHead.__init__`` refuses to run without mmcv's compiled
    ``PSAMask`` and builds the modules the block replaces. Everything else (losses,
    ``predict``, ``init_cfg``) is ``BaseDecodeHead``'s, and the names are
    ``PSAHead``'s, so a released mmseg PSANet checkpoint loads after the prefix
    rename of the block's layers (``tools/convert_upstream.py``; same logits, tested).

    Args:
        mask_size, psa_type, compact, shrink_factor, normalization_factor,
        psa_softmax: ``PSAHead``'s arguments (the configs keep mmseg's vocabulary),
            given to the block.
        block: more block options (e.g. ``outside_mask``) and its type; default
            ``dict(type='mmctx.PointwiseSpatialBlock')``. ``in_channels``,
            ``channels``, the head's ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` /
            ``align_corners``, the arguments above and ``dim=2`` are filled in.
        **kwargs: ``BaseDecodeHead`` arguments.
    """

    def __init__(self, mask_size: Sequence[int], psa_type: str = 'bi-direction',
                 compact: bool = False, shrink_factor: int = 2,
                 normalization_factor: Optional[float] = 1.0, psa_softmax: bool = True,
                 block: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        cfg = dict(type='mmctx.PointwiseSpatialBlock') if block is None else block
        self.psa_block = build_block(
            cfg, f'{type(self).__name__}.block', in_channels=self.in_channels,
            channels=self.channels, mask_size=mask_size, psa_type=psa_type,
            compact=compact, shrink_factor=shrink_factor,
            normalization_factor=normalization_factor, psa_softmax=psa_softmax,
            conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg,
            align_corners=self.align_corners, dim=2)
        self.bottleneck = ConvModule(self.in_channels * 2, self.channels, kernel_size=3,
                                     padding=1, conv_cfg=self.conv_cfg,
                                     norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    @property
    def block(self) -> torch.nn.Module:
        return self.psa_block

    def _forward_feature(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        return concat_conv(self.bottleneck, (x, self.psa_block(x)))

    def forward(self, inputs) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))
