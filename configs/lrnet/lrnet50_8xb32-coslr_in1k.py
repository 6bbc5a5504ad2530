# LR-Net-50: the LR-Net-26 recipe and layout on ResNet-50's Bottlenecks (3, 4, 6, 3).
_base_ = './lrnet26_8xb32-coslr_in1k.py'
model = dict(backbone=dict(depth=50))
