"""A test-only hook that records what the Runner holds (resume / DDP tests)."""
import copy
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class MmctxTestRecordStateHook(Hook):
    """before_train: iteration + optimizer state; after_train: this rank's parameters."""

    def before_train(self, runner) -> None:
        state = dict(iter=runner.iter,
                     optimizer=copy.deepcopy(runner.optim_wrapper.state_dict()))
        torch.save(state, osp.join(runner.work_dir, f'before_train_rank{get_rank()}.pth'))

    def after_train(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(iter=runner.iter, params=params),
                   osp.join(runner.work_dir, f'after_train_rank{get_rank()}.pth'))
