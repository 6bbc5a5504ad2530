# DNL paper recipe, ADE20K (run_fs_res101_nonlocalnowd_ade20k_seg.sh): R-101-D8,
# crop 520, batch 16 (8 GPUs x 2), 150k iterations, SGD lr 0.02 poly 0.9, wd 1e-4
# (0 on query/key), OHEM CE + aux 0.4; the paper tests multi-scale (tools/test.py --tta).
_base_ = [
    '../_base_/models/dnl-official_r50-d8.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py', '../_base_/mmctx.py'
]
crop_size = (520, 520)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(
    optimizer=dict(lr=0.02, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys=dict(theta=dict(wd_mult=0.), phi=dict(wd_mult=0.))))
iters = 150000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=16000)
