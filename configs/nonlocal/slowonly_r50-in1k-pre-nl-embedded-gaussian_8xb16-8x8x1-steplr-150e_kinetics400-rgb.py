# SlowOnly R-50, 8x8 clips, Kinetics-400, with 5 mmctx NL blocks (embedded Gaussian) where
# mmaction2's SlowOnly NL config puts NonLocal3d: blocks 0 and 2 of res3, 0, 2 and 4 of
# res4. Recipe = mmaction2's slowonly_r50-in1k-pre-nl-embedded-gaussian_8xb16-8x8x1-
# steplr-150e config: ImageNet-inflated R-50, SGD lr 0.01 (its baseline uses 0.02),
# 10-epoch linear warm-up, steps 90/130, grad clip 40, 8 GPUs x 16 clips; NonLocal3d with
# keys/values max-pooled 1x2x2, 1/sqrt(d) logit scaling, zero-initialised BN3d output.
# Note: mmaction2's NL file inherits max_epochs=256 from its 256e base although its name,
# its schedule (which ends at epoch 150) and its metafile say 150; here it is 150.
_base_ = [
    'mmaction::recognition/slowonly/'
    'slowonly_imagenet-pretrained-r50_8xb16-8x8x1-steplr-150e_kinetics400-rgb.py',
    '../_base_/mmctx.py'
]
model = dict(
    backbone=dict(
        type='mmctx.ContextResNet3dSlowOnly',
        non_local=((0, 0, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 0, 0)),
        context_cfg=dict(
            type='mmctx.NonLocalBlock',
            mode='embedded_gaussian',
            sub_sample=True,
            use_scale=True,
            norm_cfg=dict(type='BN3d', requires_grad=True))))
optim_wrapper = dict(optimizer=dict(lr=0.01))
