# I3D R-50 32x2 with 5 GCNet Simplified NL blocks (attention pooling over T*H*W, one
# zero-initialised 1x1x1 conv, add fusion) at mmaction2's I3D NL positions; recipe of the
# NL config.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(context_cfg=dict(_delete_=True, type='mmctx.SimplifiedNonLocalBlock')))
