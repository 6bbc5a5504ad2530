# R-50-D8 + mmctx.ContextHead with an A² block (m = n = 512/4 = 128: 128 descriptors of 128 channels,
# SyncBN after its zero-initialised output conv; the paper's sizes were not found).
# mmseg's FCN base (ResNetV1c-50, output stride 8, FCN aux head) with the decode head
# swapped: conv -> block -> conv, concat_input, dropout 0.1, classifier.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(type='mmctx.DoubleAttentionBlock', norm_cfg=norm_cfg)))
