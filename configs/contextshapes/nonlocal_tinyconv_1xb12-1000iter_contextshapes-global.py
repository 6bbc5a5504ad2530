_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# query/key init N(0, 0.3) instead of mmcv's N(0, 0.01): with 0.01 every logit starts
# near 0 and the attention stayed uniform within the budget on 'paired' (#14 tuning
# runs). Our choice, for this demo; the block's defaults stay mmcv's. The value init
# stays mmcv's: N(0, 0.3) as in the DNL configs measured worse for NL (README)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.NonLocalBlock', norm_cfg=norm_cfg,
                   qk_init_std=0.3)))
