# I3D R-50 32x2 with 5 GC blocks (ratio 1/16, GCNet's backbone setting; attention
# pooling over T*H*W, channel_add) at mmaction2's I3D NL positions; recipe of the NL
# config.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(_delete_=True, type='mmctx.GlobalContextBlock', ratio=1. / 16)))
