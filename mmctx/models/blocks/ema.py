"""EMA: expectation-maximization attention unit (EMANet's EMAU).

* Expectation-Maximization Attention Networks for Semantic Segmentation (Li et al.,
  ICCV 2019) — https://arxiv.org/abs/1907.13426; official code ``XiaLiPKU/EMANet``
  (``network.py`` ``EMAU``, ``train.py`` the moving average), and mmseg's
  ``EMAHead`` / ``EMAModule`` (``mmseg/models/decode_heads/ema_head.py``), whose
  parameter names this block keeps (REFERENCE-2 §A.5, §A.12).

The unit, for an input ``x`` ``(N, C, L)`` (``L`` positions of any rank) and ``K``
bases ``μ`` ``(C, K)``::

    x̃ = ema_mid_conv(x)                          1×1 with bias, frozen
    repeat T = num_stages times, under no_grad, in fp32:
        E-step  z  = softmax_K(x̃ᵀ μ)             (N, L, K)  responsibilities
                z̄  = z / Σ_L z                    (N, L, K)  columns sum to 1 over L
        M-step  μ  = ℓ2_C(x̃ z̄)                  (N, C, K)  unit bases
    recon = μ zᵀ                                  (N, C, L)  z of the last E-step
    out   = ReLU(x + ema_out_conv(ReLU(recon)))   1×1 without bias + norm

and in training, after the EM, the moving average of the bases buffer (``momentum``
``m`` is the weight of the new value, as in mmseg and PyTorch's BN)::

    bases ← (1 − m)·bases + m·mean(μ)             mean over the batch and the ranks

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`):

=================  ==========================================================
features           ``value = x̃ = ema_mid_conv(x)`` ``(N, C, L)``
projection         the EM (:meth:`EMABlock.expectation_maximization`); gather
                   ``= z̄ᵀ`` ``(N, K, L)``; the training update of ``bases``
description        the final ``μ`` (``ℓ2_C(x̃ z̄)``, not the raw ``Σ_j z̄_jk x̃_j``)
re-projection      distribute ``= z`` ``(N, L, K)``, the last E-step's, not
                   re-normalised
fusion             ``ReLU(x + ema_out_conv(ReLU(y)))``
=================  ==========================================================

The two presets are the two reference implementations; they share the structure
above and the init, and differ only in:

=================  ==========================  =================================
                   ``'official'`` (``EMAU``)   ``'mmseg'`` (``EMAModule``)
=================  ==========================  =================================
``z̄``              ``z / (1e-6 + Σ_L z)``      ``F.normalize(z, p=1, dim=L)``:
                                               ``z / max(Σ_L |z|, 1e-12)``
``ℓ2_C``           ``μ / (1e-6 + ‖μ‖)``        ``F.normalize(μ, p=2, dim=C)``
update             ``mean(μ)`` as it is        ``mean(μ)`` ℓ2-normalised first
                   (not re-normalised)         (mmseg l.72)
``ema_mid_conv``   bias: PyTorch's default     bias 0 (mmcv ``kaiming_init``)
                   uniform init (the official
                   loop re-draws weights only)
=================  ==========================  =================================

Both presets: bases ``N(0, √(2/K))`` then ``ℓ2_C``; both convs' weights Kaiming
normal, fan_out, ReLU gain (official ``normal_(0, √(2/(k²·C_out)))``, mmcv's
``ConvModule`` init: the same), norm ``γ=1, β=0``. No zero-init (neither reference
has one): unlike the other mmctx residual blocks this block does **not** start as
the identity.

Note:
    * **conv1 / ema_mid_conv never learns.** The EM runs under ``no_grad`` and the
      reconstruction uses only its ``z`` and ``μ``, so no gradient reaches
      ``ema_mid_conv`` (nor, through the reconstruction, the input: the input's
      gradient is the identity path's alone); its only role is to map the ReLU
      input ``R⁺ → R`` (the author, ``XiaLiPKU/EMANet#14``). It is frozen
      (``requires_grad=False``) in **both** presets: mmseg freezes it, and the
      official conv1, which requires grad but never gets one, would make DDP
      without ``find_unused_parameters`` fail at the second step; with PyTorch's
      optimisers (which skip parameters without a gradient) freezing changes nothing
      else.
    * **Momentum convention.** ``momentum`` is mmseg's (``0.1``): the official
      ``EM_MOM = 0.9`` weights the *old* bases and equals ``momentum = 0.1`` here.
    * **Where and over what the update runs.** In both presets it runs inside
      ``forward`` when ``self.training`` (mmseg; the official ``train.py`` does the
      same after the forward, before backward, which gives the same outputs), and
      the batch mean is averaged over the ranks (``all_reduce(· / world_size)``,
      mmseg's ``reduce_mean``) when ``torch.distributed`` is initialised. The
      official code ran under ``DataParallel``, whose gathered ``μ`` made its mean a
      mean over the whole batch: with equal per-rank batches the all-reduced mean is
      exactly that, and without it the ranks' bases drift apart under DDP (mmengine
      wraps with ``broadcast_buffers=False``). Every rank must then run the same
      number of training forwards (the all-reduce is a collective).
      :meth:`forward_with_attention` is a forward and updates in training mode too;
      :meth:`EMABlock.assignments` and code inside :meth:`EMABlock.frozen_bases`
      never update. Eval never updates: it is deterministic.
    * **fp32.** The EM runs with autocast disabled, in fp32 (fp64 stays fp64): the
      logits ``x̃ᵀμ`` are unbounded and ``Σ_L z`` reaches ``L`` (REFERENCE-2 §A.12).
      mmseg's einsums run in half precision under AMP. The reconstruction ``μ zᵀ``
      (the base's ``bmm``) runs at autocast's precision: its terms are bounded
      (``‖μ_k‖ = 1``, ``z ∈ [0, 1]``).
    * **Effective map** (:meth:`forward_with_attention`): ``M = z z̄ᵀ`` ``(N, L,
      L)``. Each row sums to ``Σ_k z_ik Σ_j z̄_jk``: exactly 1 (up to rounding) for
      ``'mmseg'``, in ``[1 − K·1e-6, 1]`` for ``'official'``. It is the map before
      the per-basis ``ℓ2_C`` rescaling (``recon_i = Σ_j Σ_k z_ik s_k z̄_jk x̃_j``
      with ``s_k = 1 / ‖(x̃ z̄)_k‖``), as GloRe's is the map before its interaction.

Checkpoint keys (the block inside an mmctx head is stored under ``ema_block``):

=====================================  ======================  ======================
mmseg ``EMAHead`` (``decode_head.``)   official ``EMAU``       ``EMABlock``
=====================================  ======================  ======================
``ema_module.bases``                   ``emau.mu``             ``bases``
``ema_mid_conv.conv.{weight,bias}``    ``emau.conv1.*``        ``ema_mid_conv.conv.*``
``ema_out_conv.conv.weight``           ``emau.conv2.0.weight`` ``ema_out_conv.conv.weight``
``ema_out_conv.bn.*``                  ``emau.conv2.1.*``      ``ema_out_conv.bn.*``
=====================================  ======================  ======================

The block is exactly the part of mmseg's ``EMAHead`` between ``ema_in_conv`` and
``bottleneck`` (``ema_mid_conv``, ``EMAModule``, ``ReLU``, ``ema_out_conv``,
``ReLU(identity + ·)``, the identity being ``ema_in_conv``'s output), and the whole
official ``EMAU``. mmctx's ``ContextHead(block=dict(type='mmctx.EMABlock',
preset='mmseg', ...), block_channels=ema_channels)`` is then mmseg's ``EMAHead``, with
``ema_in_conv.*`` → ``convs.0.*``, ``bottleneck.*`` → ``convs.1.*`` and the block's
keys under ``ema_block.`` (``conv_cat``, ``conv_seg`` unchanged).
"""
import contextlib
import math
from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import check_choice, check_int, no_autocast, upcast
from .low_rank import LowRankBlock, norm_cfg_for

PRESETS = ('official', 'mmseg')


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` averaged over the ranks when ``torch.distributed`` is initialised (mmseg's
    ``reduce_mean``: divide, then all-reduce the sum); ``t`` itself otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return t


@MODELS.register_module()
class EMABlock(LowRankBlock):
    """EMANet's EM attention unit (see the module docstring for the equations).

    Args:
        in_channels: input channels C (the bases have C channels).
        num_bases: K, the number of bases.
        num_stages: T, the number of EM iterations (each an E- and an M-step).
        momentum: weight of the new batch-mean bases in the training update,
            ``bases ← (1 − m)·bases + m·new`` (mmseg's convention; the official
            ``EM_MOM = 0.9`` is ``1 − momentum``); 0 keeps the bases fixed.
        preset: ``'official'`` (EMANet's ``EMAU`` + ``train.py`` update) or
            ``'mmseg'`` (mmseg's ``EMAHead`` middle with its ``EMAModule``); the
            differences are the module docstring's table.
        norm_cfg: the norm of ``ema_out_conv`` (official: SyncBN); ``None`` gives a
            1×1 conv with bias and no norm, as mmseg's ``ConvModule`` does.
        dim: spatial rank of the input (1, 2 or 3).
    """

    _abbr_ = 'ema_block'

    def __init__(self, in_channels: int, num_bases: int = 64, num_stages: int = 3,
                 momentum: float = 0.1, preset: str = 'official',
                 norm_cfg: Optional[dict] = dict(type='BN'), dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.num_bases = check_int('num_bases', num_bases)
        self.num_stages = check_int('num_stages', num_stages)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f'momentum must be a number in [0, 1] (the weight of the new '
                            f'bases), got {type(momentum).__name__} {momentum!r}')
        if not 0 <= momentum <= 1:
            raise ValueError(f'momentum must be in [0, 1] (the weight of the new bases; '
                             f'official EM_MOM=0.9 is momentum=0.1), got {momentum}')
        self.momentum = float(momentum)
        self.preset = check_choice('preset', preset, PRESETS)
        conv_cfg = dict(type=f'Conv{dim}d')
        # project R⁺ → R; no gradient ever reaches it (the EM is under no_grad): frozen
        self.ema_mid_conv = ConvModule(in_channels, in_channels, 1, conv_cfg=conv_cfg,
                                       norm_cfg=None, act_cfg=None)
        for p in self.ema_mid_conv.parameters():
            p.requires_grad = False
        self.ema_out_conv = ConvModule(in_channels, in_channels, 1, conv_cfg=conv_cfg,
                                       norm_cfg=norm_cfg_for(norm_cfg, dim), act_cfg=None)
        self.register_buffer('bases', torch.zeros(1, in_channels, num_bases))  # (1, C, K)
        self._bases_frozen = False
        self.reset_parameters()

    # --- the preset's normalisations -------------------------------------------------
    def normalize_positions(self, z: torch.Tensor) -> torch.Tensor:
        """``z̄``: the responsibilities ``(N, L, K)`` normalised over the positions."""
        if self.preset == 'official':
            return z / (1e-6 + z.sum(dim=1, keepdim=True))
        return F.normalize(z, p=1, dim=1)

    def normalize_channels(self, mu: torch.Tensor) -> torch.Tensor:
        """``ℓ2_C``: bases ``(…, C, K)`` normalised over the channels."""
        if self.preset == 'official':
            return mu / (1e-6 + mu.norm(dim=1, keepdim=True))
        return F.normalize(mu, p=2, dim=1)

    def reset_parameters(self) -> None:
        mid, out = self.ema_mid_conv.conv, self.ema_out_conv.conv
        mid.reset_parameters()  # the official bias init (the official loop keeps it)
        for conv in (mid, out):
            nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
        if self.preset == 'mmseg':
            nn.init.zeros_(mid.bias)
        if out.bias is not None:  # norm_cfg=None: mmcv's kaiming_init zeroes it
            nn.init.zeros_(out.bias)
        if self.ema_out_conv.with_norm:
            self.ema_out_conv.norm.reset_parameters()
        with torch.no_grad():
            bases = torch.empty_like(self.bases).normal_(0, math.sqrt(2. / self.num_bases))
            self.bases.copy_(self.normalize_channels(bases))

    # --- the EM and the moving average -----------------------------------------------
    def expectation_maximization(
            self, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The T EM iterations from the current bases, without gradient, in fp32.

        Shape:
            value: ``(N, C, L)``. Returns ``μ (N, C, K)``, ``z (N, L, K)`` and ``z̄
            (N, L, K)`` of the last iteration.
        """
        with torch.no_grad(), no_autocast(value):
            x = upcast(value.detach())  # (N, C, L)
            mu = self.bases.to(x.dtype).expand(x.shape[0], -1, -1)  # (N, C, K)
            for _ in range(self.num_stages):
                z = torch.bmm(x.transpose(1, 2), mu).softmax(dim=2)  # E: (N, L, K)
                z_bar = self.normalize_positions(z)  # (N, L, K)
                mu = self.normalize_channels(torch.bmm(x, z_bar))  # M: (N, C, K)
        return mu, z, z_bar

    def update_bases(self, mu: torch.Tensor) -> None:
        """``bases ← (1 − m)·bases + m·new``, ``new`` the mean of ``mu (N, C, K)`` over
        the batch and the ranks (ℓ2-normalised for ``'mmseg'``)."""
        with torch.no_grad():
            new = mean_over_ranks(mu.mean(dim=0, keepdim=True))  # (1, C, K)
            if self.preset == 'mmseg':
                new = self.normalize_channels(new)
            m = self.momentum
            self.bases.copy_((1 - m) * self.bases + m * new.to(self.bases.dtype))

    @contextlib.contextmanager
    def frozen_bases(self) -> Iterator[None]:
        """Within it, training-mode forwards do not update the bases (analysis passes;
        no collective is run)."""
        frozen, self._bases_frozen = self._bases_frozen, True
        try:
            yield
        finally:
            self._bases_frozen = frozen

    # --- the low-rank steps ----------------------------------------------------------
    def features(self, x):
        return {'value': self.ema_mid_conv(x).reshape(x.shape[0], self.in_channels, -1)}

    def project(self, f):
        mu, z, z_bar = self.expectation_maximization(f['value'])
        f['mu'], f['z'] = mu, z
        if self.training and not self._bases_frozen:
            self.update_bases(mu)
        return z_bar.transpose(1, 2)  # gather (N, K, L)

    def describe(self, f, gather):
        return f['mu'].transpose(1, 2)  # (N, K, C): the M-step's unit bases

    def reproject(self, f, gather):
        return f['z']  # distribute (N, L, K): the last E-step's, as it is

    def fuse(self, x, y):
        return F.relu(x + self.ema_out_conv(F.relu(y.to(x.dtype))))

    def assignments(self, x):
        """``{'gather': z̄ᵀ (N, K, L), 'distribute': z (N, L, K)}``; never updates the
        bases, also in training mode."""
        with self.frozen_bases():
            return super().assignments(x)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, num_bases={self.num_bases}, '
                f'num_stages={self.num_stages}, momentum={self.momentum}, '
                f'preset={self.preset!r}')
