_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# DANet's dual attention (PAM + CAM summed on one input, the plugin form) in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.DualAttentionBlock')))
