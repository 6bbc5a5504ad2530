_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# value_init_std 0.3 as the other DNL-family configs of this folder (#14)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.UnaryNonLocalBlock', norm_cfg=norm_cfg,
                   value_init_std=0.3)))
