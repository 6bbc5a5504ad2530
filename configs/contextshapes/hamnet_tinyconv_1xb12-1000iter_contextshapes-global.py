_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# Hamburger: NMF with 16 bases, 6 / 7 steps (SegNeXt's R), in the head
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.HamburgerBlock', num_bases=16)))
