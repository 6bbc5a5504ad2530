# R-50-D8 + mmctx.ContextHead with a criss-cross block applied twice (recurrence 2,
# shared weights), as mmseg's CCHead: conv -> CCA x2 -> conv, concat input, dropout 0.1,
# classifier. mmseg's FCN base (ResNetV1c-50, output stride 8, FCN aux head).
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.CrissCrossBlock', recurrence=2)))
