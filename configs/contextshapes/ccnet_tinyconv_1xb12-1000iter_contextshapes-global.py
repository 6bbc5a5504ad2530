_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# Criss-cross attention (CCNet's RCCA: 2 passes, shared weights) in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.CrissCrossBlock', recurrence=2)))
