# The smoke config plus a hook that records runner state for the tests.
_base_ = ['../../configs/smoke/gcb-r4-plugin_r50w16-d8_1xb2-20iter_cityscapes-64x128.py']
custom_imports = dict(imports=['mmctx', 'tests.helpers.record_hook'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='MmctxTestRecordStateHook')]
