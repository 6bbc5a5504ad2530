# R-50-D8 + mmctx.PointwiseSpatialHead: mmseg's PSAHead wiring (bi-direction PSA block on
# the head input, 97x97 masks, shrink 2, softmax, bottleneck(cat[x, psa(x)]), dropout 0.1,
# classifier) with the over-completion in pure PyTorch (no compiled mmcv PSAMask).
# mmseg's PSANet base (ResNetV1c-50, output stride 8, FCN aux head); the PSA options stay
# at the head level, in mmseg's vocabulary.
_base_ = ['mmseg::_base_/models/psanet_r50-d8.py']
model = dict(decode_head=dict(type='mmctx.PointwiseSpatialHead'))
