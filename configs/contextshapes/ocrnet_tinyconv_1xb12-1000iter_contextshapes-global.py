_base_ = './baseline_tinyconv_1xb12-1000iter_contextshapes-global.py'
# OCR, plugin form: 16 latent soft object regions from its own 1x1 classifier
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.ObjectContextBlock')))
