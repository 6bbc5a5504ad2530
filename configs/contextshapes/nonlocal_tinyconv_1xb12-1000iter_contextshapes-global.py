_base_ = './baseline_tinyconv_1xb12-600iter_contextshapes-global.py'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.NonLocalBlock', norm_cfg=norm_cfg)))
