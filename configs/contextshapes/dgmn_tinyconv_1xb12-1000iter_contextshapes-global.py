_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# DGMN: messages from 4 sampled 3x3 neighbourhoods (dilations 1, 4, 8, 12), C/4 reduction
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.DynamicGraphBlock')))
