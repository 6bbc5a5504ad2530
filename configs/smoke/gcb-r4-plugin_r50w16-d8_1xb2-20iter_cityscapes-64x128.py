# Smoke run of a context model on the real mmseg Cityscapes pipeline: mmseg's FCN
# (R-50-D8 with 1/4 of the width) with mmctx GC blocks (ratio 1/4) after conv3 of
# every bottleneck of c3-c5. Data: a tiny generated Cityscapes (mmctx.testing) in
# data/tiny_cityscapes. Runs on CPU in about a minute (tools/demo.py).
_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py']
custom_imports = dict(imports=['mmctx'], allow_failed_imports=False)

data_root = 'data/tiny_cityscapes'
crop_size = (64, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        stem_channels=16,
        base_channels=16,
        plugins=[
            dict(
                cfg=dict(type='mmctx.GlobalContextBlock', ratio=1. / 4),
                stages=(False, True, True, True),
                position='after_conv3')
        ]),
    decode_head=dict(in_channels=512, channels=32, num_convs=1),
    auxiliary_head=dict(in_channels=256, channels=16))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

iters = 20
train_cfg = dict(max_iters=iters, val_interval=iters)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)
]
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=iters))
