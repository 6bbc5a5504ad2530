_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# GCU: graph units of 2, 4, 8, 32 Gaussian vertices, graph convolution, reprojection
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.GraphUnitBlock')))
