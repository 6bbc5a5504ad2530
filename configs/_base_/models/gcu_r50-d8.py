# R-50-D8 + mmctx.ContextHead with graph convolutional units (GCU, Beyond Grids): four
# units of 2, 4, 8 and 32 Gaussian vertices on the 512 head channels, 128 output
# channels each, concatenated, 1x1 conv + SyncBN, x + gamma * (.), gamma = 0 at init.
# mmseg's FCN base (ResNetV1c-50, output stride 8, FCN aux head) with the decode head
# swapped: conv -> block -> conv, concat_input, dropout 0.1, classifier.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(
            type='mmctx.GraphUnitBlock',
            num_nodes=(2, 4, 8, 32),
            norm_cfg=norm_cfg)))
