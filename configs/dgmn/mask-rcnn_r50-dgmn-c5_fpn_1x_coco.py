# mmdet's Mask R-CNN R-50 FPN 1x (BN frozen, as mmdet's mask_rcnn base) with
# mmctx.DynamicGraphBlock after conv2 + norm2 + ReLU (the 3x3 conv) of every Bottleneck
# in c5: the official DGMN configs/dw/e2e_mask_rcnn_R_50_FPN_1x.yaml (STAGE_WITH_DW
# F,F,F,T, INSERT_POS 'after3x3', GROUP 4, dilations (1, 4, 8, 12), DEFORM 'deformatt'),
# whose module there (ReDynamicWeightsCat33) runs on the 512 planes without reduction,
# with raw filter logits times a softmax-over-taps affinity, out = x + sum_s beta_s m_s.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/mmctx.py']
model = dict(
    backbone=dict(plugins=[
        dict(
            cfg=dict(
                type='mmctx.DynamicGraphBlock',
                reduction=1,
                groups=4,
                dilations=(1, 4, 8, 12),
                filter_act=None,
                affinity_act='softmax'),
            stages=(False, False, False, True),
            position='after_conv2')
    ]))
