# I3D R-50, 32x2 clips, Kinetics-400, with 5 mmctx NL blocks (embedded Gaussian) where
# mmaction2's I3D NL configs put NonLocal3d: every other block of res3 (2) and res4 (3),
# after the residual add + ReLU. Recipe = mmaction2's plain I3D config (ImageNet-inflated
# R-50, SGD lr 0.01, 100 epochs, steps 40/80, grad clip 40, 8 GPUs x 8 clips) and its
# NonLocal3d settings: keys/values max-pooled 1x2x2, no 1/sqrt(d) logit scaling (the
# official NL code scales), BN3d after the output conv, zero-initialised.
_base_ = [
    'mmaction::recognition/i3d/i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py',
    '../_base_/mmctx.py'
]
model = dict(
    backbone=dict(
        type='mmctx.ContextResNet3d',
        non_local=((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)),
        context_cfg=dict(
            type='mmctx.NonLocalBlock',
            mode='embedded_gaussian',
            sub_sample=True,
            use_scale=False,
            norm_cfg=dict(type='BN3d', requires_grad=True))))
