_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# ANN's APNB: attention over 110 pyramid-pooled keys (scales 1, 3, 6, 8)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.AsymmetricNonLocalBlock')))
