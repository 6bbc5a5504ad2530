# The official LESA-WRN-50 (LESA_classification config/lesa_wrn.py: wrn=True doubles the
# Bottleneck width): mmpretrain's ResNet with base_channels=128 and expansion=2 is
# WRN-50-2 (stage outputs 256..2048, inner widths 128..1024).
_base_ = './lesa-resnet50_4xb32-95e_in1k.py'
model = dict(backbone=dict(base_channels=128, expansion=2))
