_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# ISA (interlaced sparse attention): 3x3 long-range groups of 8x8 blocks on the 24x24 map
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.InterlacedSparseBlock')))
