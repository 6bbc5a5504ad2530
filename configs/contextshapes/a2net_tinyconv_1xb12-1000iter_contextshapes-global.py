_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# A² (double attention): m = n = 32/4 = 8 descriptors, in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.DoubleAttentionBlock')))
