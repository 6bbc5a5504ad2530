# HTC with the official LESA-WRN-50 detection backbone (LESA_detection
# configs/lesa/lesa_htc_wrn50_fpn_dconv_c3-c5_4x1_20e_coco_1280.py on its
# configs/htc/htc_r50_fpn_1x_coco_1280.py): HTC with the semantic branch (COCO-stuff
# maps, as mmdet's htc_r50_fpn_20e_coco.py), a WRN-50-2 (wrn=True: inner widths doubled,
# here mmdet's ResNet with stem_channels=64, base_channels=128 and expansion=2, the same
# keys and shapes as the official / torchvision WRN-50-2) with LESA in
# place of the 3x3 conv of every Bottleneck of stages 3-4 except the first of stage 3,
# DCN unary terms in c3-c5 (DCN 3x3 convs elsewhere in c3-c5), 2-D relative positions made
# for the stage sizes of a fixed 1280x1280 input, checkpointed unary/binary terms;
# 4 GPUs x 1 image, SGD lr 0.005, 20 epochs (steps 16, 19).
# Any input size runs (mmctx's LESA crops / interpolates its tables); this file keeps the
# official fixed 1280x1280 resize. The paper starts from an ImageNet LESA-WRN-50: convert
# one with tools/convert_upstream.py --backbone-only and set
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...).
_base_ = ['mmdet::htc/htc_r50_fpn_20e_coco.py', '../_base_/mmctx.py']
model = dict(
    backbone=dict(
        type='mmctx.LESAResNet',
        stem_channels=64,  # WRN-50-2 keeps ResNet-50's stem (mmdet: base_channels)
        base_channels=128,
        expansion=2,
        strides=(1, 2, 2, 2),
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
        lesa=dict(num_heads=8, pe_type='detection_qr', with_cp=True),
        lesa_stages=(False, False, True, True),
        keep_first_conv=(True, True, True, False),
        pe_sizes=(320, 160, 80, 40),  # the stage sizes of a 1280x1280 input
        init_cfg=None))
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='Resize', scale=(1280, 1280), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(1280, 1280), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=1, num_workers=1, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.005))
auto_scale_lr = dict(base_batch_size=4)
