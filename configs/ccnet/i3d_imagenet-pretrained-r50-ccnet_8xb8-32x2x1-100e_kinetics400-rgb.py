# I3D R-50 32x2 with 5 3-D CrissCrossBlock blocks (row + column + tube: each position
# attends to the T+H+W-2 positions that share two of its coordinates, recurrence 2 with
# shared weights, so every position reaches every other) at mmaction2's I3D NL positions
# (every other block of res3 and res4, after the residual add + ReLU); recipe of the NL
# config. The CCNet paper's video placement is [NF]: this is mmctx's choice.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(_delete_=True, type='mmctx.CrissCrossBlock', recurrence=2)))
