_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# CGNL: dot-product kernel over 8 channel groups of 2, in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.CGNLBlock', groups=8)))
