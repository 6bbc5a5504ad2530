# Mask R-CNN with the official LESA-ResNet-50 detection backbone (LESA_detection
# configs/lesa/lesa_mask_rcnn_r50_dconv_c3-c5_8x1_20e.py): LESA in place of the 3x3
# conv of every Bottleneck of stages 3-4 except the first of stage 3, DCN unary terms
# in c3-c5 (DCN 3x3 convs elsewhere in c3-c5), 2-D relative positions, checkpointed
# unary/binary terms; 8 GPUs x 1 image, SGD lr 0.01, 20 epochs (steps 16, 19).
# This file keeps mmdet's usual keep-ratio 1333x800 pipeline, which only works because
# mmctx's LESA takes any input size (the relative tables, made for a 1024x1024 input,
# are cropped or interpolated per image); the official fixed-size recipe is
# mask-rcnn_lesa-r50-dconv-c3-c5_fpn_8xb1-20e_coco-1024x1024.py.
# The paper starts from an ImageNet-trained LESA-ResNet-50: convert one with
# tools/convert_upstream.py --backbone-only and set
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...); by default the
# backbone starts from its own init (init_cfg=None).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_20e.py',
    'mmdet::_base_/default_runtime.py', '../_base_/mmctx.py'
]
model = dict(
    backbone=dict(
        type='mmctx.LESAResNet',
        strides=(1, 2, 2, 2),
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
        lesa=dict(num_heads=8, pe_type='detection_qr', with_cp=True),
        lesa_stages=(False, False, True, True),
        keep_first_conv=(True, True, True, False),
        pe_sizes=(256, 128, 64, 32),  # the stage sizes of a 1024x1024 input
        init_cfg=None))
train_dataloader = dict(batch_size=1, num_workers=1)
optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(base_batch_size=8)
