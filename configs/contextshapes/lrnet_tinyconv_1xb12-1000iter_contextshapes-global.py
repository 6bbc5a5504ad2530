_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# Local relation 7x7 (LR-Net): a local control, not a context model
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.LocalRelationBlock')))
