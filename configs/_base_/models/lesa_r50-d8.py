# R-50-D8 + mmctx.ContextHead with a LESA block (the "LESA head"): mmseg's FCN base
# (ResNetV1c-50, output stride 8, FCN aux head) with the decode head swapped:
# conv -> LESA (unary conv + binary self-attention + gate) -> conv, concat_input,
# dropout 0.1, classifier. LESA: 8 heads, 2-D relative positions ('detection_qr')
# with tables made for the 64x128 feature map of a 512x1024 crop; other sizes crop or
# interpolate them (whole-image inference, other datasets).
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(
            type='mmctx.LESABlock', num_heads=8, pe_type='detection_qr',
            pe_size=(64, 128))))
