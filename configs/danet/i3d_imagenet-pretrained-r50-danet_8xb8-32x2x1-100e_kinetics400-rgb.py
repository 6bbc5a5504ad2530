# I3D R-50 32x2 with 5 3-D DualAttentionBlock blocks (position attention over all
# T x H x W positions on mmctx's memory-efficient core, + channel attention, summed,
# both gamma zero-initialised) at mmaction2's I3D NL positions (every other block of res3
# and res4, after the residual add + ReLU); recipe of the NL config. DANet's video
# placement is [NF]: this is mmctx's choice.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(context_cfg=dict(_delete_=True, type='mmctx.DualAttentionBlock')))
