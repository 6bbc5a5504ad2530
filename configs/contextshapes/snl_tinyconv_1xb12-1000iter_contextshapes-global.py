_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.SimplifiedNonLocalBlock')))
