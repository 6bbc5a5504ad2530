"""Hamburger: a matrix decomposition (NMF) "ham" between two 1×1 "breads".

* Is Attention Better Than Matrix Decomposition? (Geng et al., ICLR 2021) —
  https://arxiv.org/abs/2109.04553; official code ``Gsunshine/Enjoy-Hamburger``
  (``seg/HamNet/hamburger/ham.py``, ``burger.py``). The parameter names and the bread
  are those of mmseg's ``Hamburger`` (``mmseg/models/decode_heads/ham_head.py``, the
  module inside SegNeXt's ``LightHamHead``), so its checkpoints load 1:1.

The NMF ham (:class:`NMFHam`), on ``x ≥ 0`` viewed as ``(B·S, D, L)`` with ``D = C/S``
(channel ``c = s·D + d``): ``x ≈ bases · coefᵀ``, ``bases`` ``(D, R)``, ``coef``
``(L, R)``:

* ``bases⁰ ~ U[0, 1)`` L2-normalised over ``D`` (drawn strictly positive: an exact 0
  stays 0 under a multiplicative update);
* ``coef⁰ = softmax_R(xᵀ · bases⁰)`` (mmseg's ``inv_t`` is forced to 1 for NMF);
* ``K`` multiplicative updates (``K = train_steps`` in training, ``eval_steps`` in eval),
  in this order::

      coef  ← coef  ⊙ (xᵀ · bases) / (coef · (basesᵀ · bases) + 1e-6)
      bases ← bases ⊙ (x · coef)   / (bases · (coefᵀ · coef) + 1e-6)

* one more coef update, then the ham's output is ``bases · coefᵀ``.

Low-rank steps (:mod:`mmctx.models.blocks.low_rank`):

=================  ==========================================================
features           ``value = ReLU(ham_in(x))`` (1×1 with bias, no norm) as
                   ``(B·S, D, L)``; the ReLU makes it non-negative, as NMF needs
projection         the NMF above; the gather is **our choice** (the paper has none):
                   ``coefᵀ`` normalised over the positions, ``coef_jk / Σ_j coef_jk``
descriptors        the ``R`` NMF bases (``(B·S, R, D)``), not ``gather · value``
re-projection      distribute = ``coef`` ``(L, R)``: ``y = bases · coefᵀ``
fusion             ``ReLU(x + ham_out(y))``; ``ham_out`` = 1×1 + norm (bias only
                   without a norm)
=================  ==========================================================

The effective map of :meth:`~LowRankBlock.forward_with_attention` is therefore ``M =
coef · diag(1/Σ_j coef_j) · coefᵀ`` ``(B·S, L, L)`` (one per split; ``(B, L, L)`` for the
default ``S = 1``): position ``i``'s weight on ``j`` through the shared bases. ``y`` is
``bases · coefᵀ``, not ``M · value`` (the bases are a MU iterate, not a gather), and
``M``'s rows sum to ``Σ_k coef_ik``, not to 1.

Choices, and where they differ from the references:

* ``one_step_grad`` (default ``False``, as mmseg): ``False`` back-propagates through all
  ``K`` steps, as mmseg's ``LightHamHead`` and the official mmseg ports (they comment
  out the ``no_grad``). ``True`` is the paper's one-step gradient (official
  ``seg/HamNet``): the init and the ``K`` steps run without autograd and only the last
  coef update carries a gradient, through ``x`` (``bases`` and the previous ``coef`` are
  constants); it saves ``K×`` activations. The forward values are the same either way.
* ``rand_init=True`` (default, as official and mmseg): new bases are drawn from torch's
  global RNG on **every** forward, training and eval, so eval is reproducible only under
  a seed. ``rand_init=False``: one fixed positive buffer ``ham.bases`` ``(S, D, R)`` drawn
  at construction (and by ``reset_parameters``), shared over the batch, never updated;
  the official code's eval-time ``online_update`` of that buffer (momentum ``eta``) is
  not implemented: it makes eval depend on what was evaluated before.
* The bases are drawn on the input's device (mmseg draws on the CPU and copies): with the
  same seed, CPU draws equal mmseg's.
* The NMF runs in fp32 under autocast (``x·coef`` sums over all positions; the 1e-6
  epsilons are at the edge of fp16), fp64 stays fp64. ``NMFHam.forward`` reconstructs
  in fp32 and casts back; the block's reconstruction ``coef · basesᵀ`` is the shared
  ``LowRankBlock`` step, which runs under the caller's autocast (as for A²).
* Defaults (only ``in_channels`` is needed): ``ham_channels = in_channels`` (mmseg's
  ``Hamburger`` has no other option), ``S = 1``, ``R = 64``, 6 / 7 steps (mmseg's
  ``NMF2D``; SegNeXt's configs use ``MD_R=16``), norm GN(32) as the SegNeXt configs —
  when ``norm_cfg`` is left at its default and 32 does not divide ``in_channels``, the
  largest divisor ``≤ 32`` is used as ``num_groups``; a GN written out is taken as
  written (a ``num_groups`` that does not divide is an error). No zero-init (neither the
  paper nor mmseg has one; ``zero_init_out=True`` makes the block ``ReLU(x)`` at init).
* Weights: ConvModule's init (Kaiming normal, fan-out, zero bias; the official
  ``N(0, √(2/(k²·out)))``), norm weight 1, bias 0.

mmseg key mapping (``LightHamHead``: ``decode_head.hamburger.<key>`` → ``<key>``)::

    ham_in.conv.weight, ham_in.conv.bias      1×1 C→C', with bias
    ham_out.conv.weight                        1×1 C'→C (+ ham_out.conv.bias without norm)
    ham_out.gn.weight, ham_out.gn.bias         the norm (``ham_out.bn.*`` for BN/SyncBN)
    ham.bases                                  only with rand_init=False, (S, D, R)

mmseg's ``ham_kwargs`` map to ``num_splits=MD_S``, ``num_bases=MD_R``,
``train_steps``, ``eval_steps``, ``rand_init``; its ``inv_t`` has no effect for NMF.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import check_bool, check_int, no_autocast, upcast, zero_init_last
from .low_rank import LowRankBlock, norm_cfg_for

#: the MU rule's denominator epsilon (official and mmseg)
EPS = 1e-6
#: the smallest step of torch.rand in fp32: drawn bases are clamped to at least this
MIN_BASIS = 2. ** -24
#: SegNeXt's ham norm; left at this default, num_groups adapts to the channels
DEFAULT_NORM = dict(type='GN', num_groups=32, requires_grad=True)


def random_bases(batch: int, channels: int, num_bases: int, device=None,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``(batch, channels, num_bases)`` bases ``~ U[0, 1)`` (torch's global RNG, fp32
    draw as mmseg), clamped strictly positive, L2-normalised over ``channels``."""
    bases = torch.rand((batch, channels, num_bases), device=device)
    bases = bases.clamp_min(MIN_BASIS)
    bases = bases / bases.norm(dim=1, keepdim=True)
    return bases if dtype is None else bases.to(dtype)


class NMFHam(nn.Module):
    """The NMF ham (module docstring): ``(B, C, *S)`` ≥ 0 → its rank-``R`` reconstruction.

    Args:
        channels: ``C``.
        num_splits: ``S``; ``C`` is split into ``S`` groups of ``D = C / S``, each
            factorised on its own.
        num_bases: ``R``.
        train_steps / eval_steps: ``K``, the MU steps in training / eval mode.
        rand_init: new random bases every forward (``True``) or the fixed buffer
            ``bases`` ``(S, D, R)``.
        one_step_grad: autograd only through the last coef update (the paper) instead
            of through all steps (mmseg).
    """

    def __init__(self, channels: int, num_splits: int = 1, num_bases: int = 64,
                 train_steps: int = 6, eval_steps: int = 7, rand_init: bool = True,
                 one_step_grad: bool = False) -> None:
        super().__init__()
        self.channels = check_int('channels', channels)
        self.num_splits = check_int('num_splits', num_splits)
        if channels % num_splits:
            raise ValueError(f'num_splits={num_splits} must divide the ham channels '
                             f'({channels}): D = channels / num_splits')
        self.split_channels = channels // num_splits
        self.num_bases = check_int('num_bases', num_bases)
        self.train_steps = check_int('train_steps', train_steps, minimum=0)
        self.eval_steps = check_int('eval_steps', eval_steps, minimum=0)
        self.rand_init = check_bool('rand_init', rand_init)
        self.one_step_grad = check_bool('one_step_grad', one_step_grad)
        if not rand_init:
            self.register_buffer(
                'bases', random_bases(num_splits, self.split_channels, num_bases))

    @property
    def steps(self) -> int:
        return self.train_steps if self.training else self.eval_steps

    def reset_parameters(self) -> None:
        if not self.rand_init:
            with torch.no_grad():
                self.bases.copy_(random_bases(*self.bases.shape, device=self.bases.device))

    def initial_bases(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """``(batch·S, D, R)``: a fresh draw, or the fixed buffer repeated."""
        if self.rand_init:
            return random_bases(batch * self.num_splits, self.split_channels,
                                self.num_bases, device=device, dtype=dtype)
        return self.bases.to(device=device, dtype=dtype).repeat(batch, 1, 1)

    @staticmethod
    def update_coef(x, bases, coef):
        """``coef ⊙ (xᵀ·bases) / (coef·(basesᵀ·bases) + ε)`` → ``(B·S, L, R)``."""
        num = torch.bmm(x.transpose(1, 2), bases)  # (B·S, L, R)
        den = torch.bmm(coef, torch.bmm(bases.transpose(1, 2), bases))  # (B·S, L, R)
        return coef * num / (den + EPS)

    @staticmethod
    def update_bases(x, bases, coef):
        """``bases ⊙ (x·coef) / (bases·(coefᵀ·coef) + ε)`` → ``(B·S, D, R)``."""
        num = torch.bmm(x, coef)  # (B·S, D, R)
        den = torch.bmm(bases, torch.bmm(coef.transpose(1, 2), coef))  # (B·S, D, R)
        return bases * num / (den + EPS)

    def decompose(self, x: torch.Tensor, bases: Optional[torch.Tensor] = None,
                  check: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B·S, D, L)`` ≥ 0 → ``(bases (B·S, D, R), coef (B·S, L, R))``, in fp32
        (fp64 for fp64 input).

        ``bases`` (optional) are the initial bases ``(B·S, D, R)``, > 0; by default
        :meth:`initial_bases`. ``check=False`` skips the sign checks (a device sync),
        for callers whose input is non-negative by construction.
        """
        if x.dim() != 3 or x.shape[1] != self.split_channels:
            raise ValueError(f'NMFHam.decompose expects (B·S, D={self.split_channels}, '
                             f'L), got shape {tuple(x.shape)}')
        if check and bool((x < 0).any()):
            raise ValueError('NMFHam needs a non-negative input (NMF: x ≈ bases·coefᵀ '
                             'with both ≥ 0); got negative values — put a ReLU before it')
        with no_autocast(x):
            x = upcast(x)
            if bases is None:
                bases = self.initial_bases(x.shape[0] // self.num_splits, x.device, x.dtype)
            else:
                want = (x.shape[0], self.split_channels, self.num_bases)
                if tuple(bases.shape) != want:
                    raise ValueError(f'initial bases must have shape {want}, got '
                                     f'{tuple(bases.shape)}')
                if check and not bool((bases > 0).all()):
                    raise ValueError('initial bases must be strictly positive (an exact '
                                     '0 stays 0 under a multiplicative update)')
                bases = bases.to(device=x.device, dtype=x.dtype)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.one_step_grad):
                coef = torch.bmm(x.transpose(1, 2), bases).softmax(dim=-1)  # (B·S, L, R)
                for _ in range(self.steps):
                    coef = self.update_coef(x, bases, coef)
                    bases = self.update_bases(x, bases, coef)
            coef = self.update_coef(x, bases, coef)  # with autograd in both modes
        return bases, coef

    def forward(self, x: torch.Tensor, bases: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, *S)`` ≥ 0 → ``(B, C, *S)``, as mmseg's ``NMF2D`` (any spatial rank)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'NMFHam expects a torch.Tensor, got {type(x).__name__}')
        if x.dim() < 3 or x.shape[1] != self.channels:
            raise ValueError(f'NMFHam expects (B, C={self.channels}, *spatial), got '
                             f'shape {tuple(x.shape)}')
        n = x.shape[0]
        flat = x.reshape(n * self.num_splits, self.split_channels, -1)  # (B·S, D, L)
        bases, coef = self.decompose(flat, bases)
        with no_autocast(x):
            y = torch.bmm(bases, coef.transpose(1, 2))  # (B·S, D, L)
        return y.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_splits={self.num_splits}, '
                f'num_bases={self.num_bases}, train_steps={self.train_steps}, '
                f'eval_steps={self.eval_steps}, rand_init={self.rand_init}, '
                f'one_step_grad={self.one_step_grad}')


def _largest_divisor(n: int, at_most: int) -> int:
    return max(g for g in range(1, min(n, at_most) + 1) if n % g == 0)


def _ham_norm(norm_cfg, channels: int, dim: int) -> Optional[dict]:
    if norm_cfg is DEFAULT_NORM:
        cfg = dict(DEFAULT_NORM)
        cfg['num_groups'] = _largest_divisor(channels, DEFAULT_NORM['num_groups'])
        return cfg
    cfg = norm_cfg_for(norm_cfg, dim)
    if cfg is not None and cfg['type'] == 'GN':
        groups = cfg.get('num_groups')
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise TypeError(f'a GN norm_cfg needs an int num_groups >= 1, got {groups!r}')
        if channels % groups:
            divisors = [g for g in range(1, min(channels, 64) + 1) if channels % g == 0]
            raise ValueError(f'GN num_groups={groups} must divide in_channels={channels}; '
                             f'divisors: {divisors}')
    return cfg


@MODELS.register_module()
class HamburgerBlock(LowRankBlock):
    """Hamburger (NMF ham), mmseg's ``Hamburger`` as an mmctx block.

    Args:
        in_channels: input (and output) channels C.
        ham_channels: channels ``C'`` between ``ham_in`` and ``ham_out`` (default C, as
            mmseg; the official ``burger.py`` allows another).
        num_splits: ``S`` (mmseg ``MD_S``); must divide ``ham_channels``.
        num_bases: ``R`` (mmseg ``MD_R``).
        train_steps / eval_steps: MU steps ``K`` in training / eval mode.
        rand_init: draw new bases every forward (official, mmseg) or use one fixed
            buffer ``ham.bases`` (reproducible eval).
        one_step_grad: the paper's one-step gradient instead of back-propagating
            through all steps (mmseg).
        norm_cfg: the norm of ``ham_out`` (``None``: none, and ``ham_out`` has a bias).
        zero_init_out: zero the last layer of ``ham_out`` (block = ``ReLU(x)`` at init).
        dim: spatial rank of the input (1, 2 or 3).

    Shape:
        ``(N, C, *S)`` → ``(N, C, *S)``, non-negative (the final ReLU).
    """

    _abbr_ = 'ham_block'

    def __init__(self, in_channels: int, ham_channels: Optional[int] = None,
                 num_splits: int = 1, num_bases: int = 64, train_steps: int = 6,
                 eval_steps: int = 7, rand_init: bool = True, one_step_grad: bool = False,
                 norm_cfg: Optional[dict] = DEFAULT_NORM, zero_init_out: bool = False,
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        self.ham_channels = check_int('ham_channels', in_channels if ham_channels is None
                                      else ham_channels)
        self.zero_init_out = check_bool('zero_init_out', zero_init_out)
        conv_cfg = dict(type=f'Conv{dim}d')
        self.ham_in = ConvModule(in_channels, self.ham_channels, 1, conv_cfg=conv_cfg,
                                 norm_cfg=None, act_cfg=None)
        self.ham = NMFHam(self.ham_channels, num_splits, num_bases, train_steps,
                          eval_steps, rand_init, one_step_grad)
        self.norm_cfg = _ham_norm(norm_cfg, in_channels, dim)
        self.ham_out = ConvModule(self.ham_channels, in_channels, 1, conv_cfg=conv_cfg,
                                  norm_cfg=self.norm_cfg, act_cfg=None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.ham_in.init_weights()
        self.ham_out.init_weights()
        self.ham.reset_parameters()
        if self.zero_init_out:
            zero_init_last(self.ham_out)

    def features(self, x):
        n = x.shape[0]
        value = torch.relu(self.ham_in(x))
        return {'value': value.reshape(n * self.ham.num_splits,
                                       self.ham.split_channels, -1)}  # (B·S, D, L)

    def project(self, f):
        # ReLU above: non-negative by construction, no sign check (no device sync)
        f['bases'], f['coef'] = self.ham.decompose(f['value'], check=False)
        coef = f['coef']  # (B·S, L, R)
        gather = coef / (coef.sum(dim=1, keepdim=True) + EPS)  # over positions
        return gather.transpose(1, 2)  # (B·S, R, L)

    def describe(self, f, gather):
        return f['bases'].transpose(1, 2)  # the R bases as descriptors, (B·S, R, D)

    def reproject(self, f, gather):
        return f['coef']  # (B·S, L, R)

    def fuse(self, x, y):
        return torch.relu(x + self.ham_out(y.to(x.dtype)))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, ham_channels={self.ham_channels}, '
                f'norm_cfg={self.norm_cfg}, zero_init_out={self.zero_init_out}')


__all__ = ['HamburgerBlock', 'NMFHam', 'random_bases']
