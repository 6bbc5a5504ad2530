# LR-Net-26 (Local Relation Networks, Hu et al., ICCV 2019) on ImageNet-1k: a ResNet-26
# (Bottlenecks (2, 2, 2, 2)) whose 3x3 convs are 7x7 local relation layers (channel
# sharing m = 8, squared-difference composability, geometry prior) and whose 7x7 stem
# conv is 1x1 conv -> BN -> ReLU -> 7x7 local relation (stride 2).
# Chosen (the paper's exact layout and recipe were not found): Bottleneck inner width =
# output / 2 (base_channels=128, expansion=2; outputs 256..2048 as ResNet), which puts
# the model at 15.3 M params / 2.6 GMACs, near the paper's 14.7 M / 2.6 GFLOPs; the
# training recipe is mmpretrain's standard ResNet cosine recipe: SGD lr 0.1 for 256
# images (8 GPUs x 32), momentum 0.9, weight decay 1e-4, 100 epochs, cosine per epoch,
# RandomResizedCrop 224 + flip, test 256 -> 224.
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256_coslr.py',
    'mmpretrain::_base_/default_runtime.py', '../_base_/mmctx.py'
]
model = dict(
    backbone=dict(
        type='mmctx.LRResNet',
        depth=26,
        base_channels=128,
        expansion=2,
        relation=dict(kernel_size=7, channel_sharing=8),
        lr_stem=True))
