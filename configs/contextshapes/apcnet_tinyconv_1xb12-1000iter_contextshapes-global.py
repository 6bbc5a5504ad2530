_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# APCNet's adaptive context modules (pool scales 1, 2, 3, 6) + 3x3 bottleneck back to 32
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.AdaptiveContextBlock')))
