_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# SE (squeeze-and-excitation: average pooling, bottleneck, sigmoid scaling) in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.SqueezeExcitationBlock')))
