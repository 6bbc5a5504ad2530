# EMANet's own VOC recipe (XiaLiPKU/EMANet settings.py / train.py, REFERENCE-2 §A.5):
# R-101 at output stride 8 (ResNetV1c: the deep stem), the official EMA unit
# (EMABlock preset='official': z / (1e-6 + sum z), bases moving-averaged with EM_MOM 0.9
# = momentum 0.1 here, not re-normalised) in the official head (3x3 2048 -> 512, EMA,
# 3x3 512 -> 256, dropout 0.1, classifier; no concatenation, no auxiliary head),
# SyncBN momentum 3e-4 everywhere, batch 16 (4 GPUs x 4), 30k iterations, SGD lr 9e-3,
# momentum 0.9, wd 1e-4 (none on norms and biases), biases at 2x lr, poly 0.9 (updated
# every iteration here; every 10 in the official code), random scale 0.5-2.0 + 512 crop
# (official: 513) on VOC 2012 train_aug.
_base_ = [
    '../_base_/models/emanet_r50-d8.py',
    'mmseg::_base_/datasets/pascal_voc12_aug.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py', '../_base_/mmctx.py'
]
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True, momentum=3e-4)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(depth=101, norm_cfg=norm_cfg),
    decode_head=dict(
        num_classes=21,
        concat_input=False,
        norm_cfg=norm_cfg,
        block=dict(preset='official', norm_cfg=norm_cfg)),
    auxiliary_head=None)
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    optimizer=dict(lr=0.009, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0., norm_decay_mult=0.))
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=30000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=30000, val_interval=3000)
default_hooks = dict(checkpoint=dict(interval=3000))
