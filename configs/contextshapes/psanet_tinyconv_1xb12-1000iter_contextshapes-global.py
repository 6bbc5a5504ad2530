_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# PSANet collect + distribute; attention on the 12x12 shrunk map, so 23x23 masks cover it
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.PointwiseSpatialBlock', mask_size=(23, 23))))
