# DNL paper recipe, Cityscapes (run_fs_res101_nonlocalnowd_ln_cityscapes_seg.sh):
# R-101-D8, crop 769, random resize 0.5-2, batch 8 (4 GPUs x 2), 60k iterations,
# SGD lr 0.01 poly 0.9, wd 5e-4 (0 on query/key), SyncBN, OHEM CE + aux 0.4,
# sliding-window test (769 crops, stride 513 = 2/3).
_base_ = [
    '../_base_/models/dnl-official_r50-d8.py',
    'mmseg::_base_/datasets/cityscapes_769x769.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py', '../_base_/mmctx.py'
]
crop_size = (769, 769)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101),
    decode_head=dict(align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
iters = 60000
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=6000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=6000))
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys=dict(theta=dict(wd_mult=0.), phi=dict(wd_mult=0.))))
