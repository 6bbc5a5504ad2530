# R-50-D8 + mmctx.ContextHead with a GloRe unit (num_mid = 512/4 = 128 nodes of 256 state channels,
# 1/L normalisation for the variable test sizes, SyncBN eps 1e-4 zero-initialised).
# mmseg's FCN base (ResNetV1c-50, output stride 8, FCN aux head) with the decode head
# swapped: conv -> block -> conv, concat_input, dropout 0.1, classifier.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(
            type='mmctx.GloReBlock',
            normalize=True,
            norm_cfg=dict(type='SyncBN', eps=1e-4, requires_grad=True))))
