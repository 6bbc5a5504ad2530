_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# EMA: 16 bases, ONE EM iteration (the survey: alike NL / A²), in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.EMABlock', num_bases=16, num_stages=1, preset='mmseg')))
