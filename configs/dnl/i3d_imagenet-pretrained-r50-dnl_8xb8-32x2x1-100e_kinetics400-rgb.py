# I3D R-50 32x2 with 5 DNL blocks (mmseg preset: whitened pairwise term, temperature 0.05,
# learned unary mask, reduced value + zero-initialised BN3d output) at mmaction2's I3D NL
# positions, keys/values max-pooled 1x2x2 as its NL; recipe of the NL config.
_base_ = ('../nonlocal/'
          'i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(
            _delete_=True,
            type='mmctx.DisentangledNonLocalBlock',
            preset='mmseg',
            sub_sample=True,
            norm_cfg=dict(type='BN3d', requires_grad=True))))
