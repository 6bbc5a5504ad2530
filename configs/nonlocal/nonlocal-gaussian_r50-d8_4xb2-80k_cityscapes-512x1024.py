# NL with the gaussian pairwise function (normalised by the number of positions
# for dot product and concatenation, as mmcv and the NL paper)
_base_ = './nonlocal_r50-d8_4xb2-80k_cityscapes-512x1024.py'
model = dict(decode_head=dict(block=dict(mode='gaussian')))
