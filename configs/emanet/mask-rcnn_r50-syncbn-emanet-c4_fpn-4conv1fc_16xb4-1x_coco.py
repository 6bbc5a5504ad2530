# The DNL paper's COCO table positions (Howal/DNL-Object-Detection): one block after
# the residual add (before the final ReLU) of res4 block -2 ("c4"), here
# EMABlock.
_base_ = '../_base_/det/mask-rcnn_r50-syncbn_fpn-4conv1fc_16xb4-1x_coco.py'
model = dict(
    backbone=dict(
        after_add=dict(
            block=dict(type='mmctx.EMABlock', preset='mmseg', norm_cfg=dict(type='SyncBN', requires_grad=True)),
            indices=[[], [], [-2], []])))
