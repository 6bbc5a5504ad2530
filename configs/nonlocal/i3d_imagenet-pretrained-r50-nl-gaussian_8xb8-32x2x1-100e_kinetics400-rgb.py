# NL with the Gaussian pairwise function (softmax of x_i^T x_j, no theta/phi convs)
_base_ = './i3d_imagenet-pretrained-r50-nl-embedded-gaussian_8xb8-32x2x1-100e_kinetics400-rgb.py'
model = dict(backbone=dict(context_cfg=dict(mode='gaussian')))
