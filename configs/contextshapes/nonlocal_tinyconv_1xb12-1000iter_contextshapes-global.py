_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# query/key and value init N(0, 0.3) instead of mmcv's N(0, 0.01): with 0.01 every logit
# starts near 0 and the values (and so the first gradients reaching the attention) are
# tiny; the attention then stayed uniform within the budget on 'paired' (#14 tuning
# runs). Our choice, for this demo; the block's defaults stay mmcv's
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.NonLocalBlock', norm_cfg=norm_cfg,
                   qk_init_std=0.3, value_init_std=0.3)))
