_base_ = './apcnet_tinyconv_1xb12-600iter_contextshapes-global.py'
data_root = 'data/contextshapes/paired'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
