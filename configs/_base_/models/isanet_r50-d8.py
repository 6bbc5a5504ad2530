# R-50-D8 + mmctx.ContextHead reproducing mmseg's ISAHead with the same weights:
# in_conv (3x3, 2048 -> 512) = convs.0; an InterlacedSparseBlock (isa_channels 256,
# down_factor (8, 8): a global relation within the long-range groups of positions 8
# apart, a local relation within each 8x8 block, out_conv 1x1 on [context; x], SyncBN);
# no concatenation with the head input, dropout 0.1, classifier. Backbone and FCN aux
# head: mmseg's isanet_r50-d8.py.
_base_ = ['mmseg::_base_/models/isanet_r50-d8.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='mmctx.ContextHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        num_convs=1,
        kernel_size=3,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        block=dict(
            type='mmctx.InterlacedSparseBlock',
            isa_channels=256,
            down_factor=(8, 8),
            norm_cfg=norm_cfg)))
