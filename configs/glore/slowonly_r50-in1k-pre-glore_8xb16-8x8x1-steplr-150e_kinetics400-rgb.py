# SlowOnly R-50 8x8 with 5 GloRe units (the official fixed-size unit, no 1/L; BN3d eps 1e-4 zero-initialised)
# at mmaction2's SlowOnly NL positions; recipe of the NL config.
_base_ = ('../nonlocal/'
          'slowonly_r50-in1k-pre-nl-embedded-gaussian_8xb16-8x8x1-steplr-150e_kinetics400-rgb.py')
model = dict(
    backbone=dict(
        context_cfg=dict(
            _delete_=True,
            type='mmctx.GloReBlock',
            norm_cfg=dict(type='BN3d', eps=1e-4, requires_grad=True))))
