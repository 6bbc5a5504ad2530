# mmdet's Mask R-CNN R-50 FPN 1x (BN frozen, as mmdet's mask_rcnn base) with
# mmctx.GlobalContextBlock (ratio 1/16)
# after conv3+norm3 (before the residual add) of every Bottleneck in c3-c5:
# mmdet::gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py
# with the mmctx block in place of mmcv's ContextBlock.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/mmctx.py']
model = dict(
    backbone=dict(plugins=[
        dict(
            cfg=dict(type='mmctx.GlobalContextBlock', ratio=1. / 16),
            stages=(False, True, True, True),
            position='after_conv3')
    ]))
