# SlowOnly R-50 8x8 with 5 A² blocks (m = n = C/4, zero-initialised BN3d output)
# at mmaction2's SlowOnly NL positions; recipe of the NL config.
_base_ = ('../nonlocal/'
          'slowonly_r50-in1k-pre-nl-embedded-gaussian_8xb16-8x8x1-steplr-150e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(
            _delete_=True,
            type='mmctx.DoubleAttentionBlock',
            norm_cfg=dict(type='BN3d', requires_grad=True))))
