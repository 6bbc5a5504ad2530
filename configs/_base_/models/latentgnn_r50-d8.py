# R-50-D8 + mmctx.ContextHead with a LatentGNN block (100 latent nodes, 512/8 = 64 visible
# channels, graph conv on: the official C4 detection settings; segmentation settings
# were not found).
# mmseg's FCN base (ResNetV1c-50, output stride 8, FCN aux head) with the decode head
# swapped: conv -> block -> conv, concat_input, dropout 0.1, classifier.
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        type='mmctx.ContextHead',
        block=dict(
            type='mmctx.LatentGNNBlock',
            latent_dims=100,
            channel_stride=8,
            graph_conv=True,
            norm_cfg=norm_cfg)))
