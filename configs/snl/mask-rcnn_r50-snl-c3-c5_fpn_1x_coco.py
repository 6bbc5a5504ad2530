# mmdet's Mask R-CNN R-50 FPN 1x (BN frozen, as mmdet's mask_rcnn base) with
# mmctx.SimplifiedNonLocalBlock (GCNet's SNL)
# after conv3+norm3 (before the residual add) of every Bottleneck in c3-c5:
# the placement of mmdet's gcnet/ configs, for comparison with GC.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/mmctx.py']
model = dict(
    backbone=dict(plugins=[
        dict(
            cfg=dict(type='mmctx.SimplifiedNonLocalBlock'),
            stages=(False, True, True, True),
            position='after_conv3')
    ]))
