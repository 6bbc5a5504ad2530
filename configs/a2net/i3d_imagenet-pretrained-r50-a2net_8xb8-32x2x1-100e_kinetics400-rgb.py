# I3D R-50 32x2 with 5 DoubleAttentionBlock blocks at mmaction2's I3D NL positions (every other
# block of res3 and res4, after the residual add + ReLU); recipe of the NL config.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(
            _delete_=True,
            type='mmctx.DoubleAttentionBlock', norm_cfg=dict(type='BN3d', requires_grad=True))))
