_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# LESA (unary 3x3 conv + binary self-attention + learned gate) in the head; 8 heads on
# the head's 32 channels, 2-D relative positions for the 24x24 feature map
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.LESABlock', num_heads=8, pe_size=24)))
