_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# GloRe: 8 nodes of 16 state channels (num_mid = 32/4), fixed 24x24 maps, in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.GloReBlock')))
