"""DANet's two-branch decode head on mmctx's :class:`~mmctx.models.blocks.DualAttentionBlock`."""
from typing import Optional

from mmseg.models.decode_heads.da_head import DAHead

from ...registry import MODELS
from ..blocks._base import build_block


@MODELS.register_module()
class DualAttentionHead(DAHead):
    """mmseg's ``DAHead`` with its ``PAM`` / ``CAM`` replaced by one mmctx
    ``DualAttentionBlock`` (stored as ``da_block``).

    Why a head variant and not :class:`ContextHead`: DANet gives each attention module
    its own branch — ``pam_in_conv → PAM → pam_out_conv`` and ``cam_in_conv → CAM →
    cam_out_conv`` on the same head input, a classifier per branch and one on their
    sum, and a loss on each of the three outputs (``pam_cam``, ``pam``, ``cam``;
    prediction uses ``pam_cam`` only). ``ContextHead`` has one conv chain with one
    block. Everything but the attention modules is mmseg's ``DAHead`` (its convs,
    classifiers, ``loss_by_feat``, ``predict``), so a released mmseg DANet checkpoint
    loads after renaming ``pam.*`` / ``cam.*`` to ``da_block.pam.*`` /
    ``da_block.cam.*`` (``tools/convert_upstream.py``; same logits, tested); the
    attention runs on mmctx's memory-efficient core (no HW×HW map kept).

    Args:
        pam_channels: query/key width of the position attention (mmseg's argument;
            64 in its configs).
        block: the block config; default ``dict(type='mmctx.DualAttentionBlock')``.
            ``in_channels`` (= ``channels``), ``pam_channels`` and ``dim=2`` are filled
            in; the block must have both modules (``pam=True, cam=True``: the head has
            a branch for each).
        **kwargs: ``DAHead`` / ``BaseDecodeHead`` arguments.
    """

    def __init__(self, pam_channels: int, block: Optional[dict] = None, **kwargs) -> None:
        super().__init__(pam_channels=pam_channels, **kwargs)
        del self.pam, self.cam  # mmseg's modules; the block below replaces them
        cfg = dict(type='mmctx.DualAttentionBlock') if block is None else block
        module = build_block(cfg, f'{type(self).__name__}.block', in_channels=self.channels,
                             pam_channels=pam_channels, dim=2)
        if getattr(module, 'pam', None) is None or getattr(module, 'cam', None) is None:
            raise ValueError(f'{type(self).__name__} runs a position- and a channel-'
                             f'attention branch; its block must have both modules, got '
                             f'{module!r}')
        self.da_block = module

    @property
    def block(self):
        """The head's context block (as :attr:`ContextHead.block`)."""
        return self.da_block

    def forward(self, inputs):
        """``(pam_cam_out, pam_out, cam_out)`` as mmseg's ``DAHead``."""
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.da_block.position_attention(self.pam_in_conv(x)))
        pam_out = self.pam_cls_seg(pam_feat)
        cam_feat = self.cam_out_conv(self.da_block.channel_attention(self.cam_in_conv(x)))
        cam_out = self.cam_cls_seg(cam_feat)
        return self.cls_seg(pam_feat + cam_feat), pam_out, cam_out
