# The official LESA-ResNet-50 on ImageNet-1k (Chenglin-Yang/LESA_classification
# config/lesa_resnet.py + train.py): LESA (classification relative embeddings, 8 heads)
# in place of the 3x3 conv of every Bottleneck of stages 3-4 except the first of stage 3;
# stage 4 not downsampled (strides 1, 2, 2, 1: 14x14 at 224 input); SGD lr 0.05 for 128
# images (4 GPUs x 32), Nesterov, momentum 0.9, weight decay 8e-5, 95 epochs of which 5
# warm-up, cosine per iteration; RandomResizedCrop 224 + flip, test 256 -> 224.
# Chosen (not stated in the official code we read): the warm-up starts at 1 % of lr.
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/default_runtime.py', '../_base_/mmctx.py'
]
model = dict(
    backbone=dict(
        type='mmctx.LESAResNetCls',
        strides=(1, 2, 2, 1),
        lesa=dict(num_heads=8, pe_type='classification'),
        lesa_stages=(False, False, True, True),
        keep_first_conv=(True, True, True, False),
        pe_sizes=(56, 28, 14, 14)))
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=8e-5, nesterov=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=90, eta_min=0., by_epoch=True, begin=5, end=95,
         convert_to_iter_based=True)
]
train_cfg = dict(by_epoch=True, max_epochs=95, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128)
