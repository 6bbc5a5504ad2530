"""PSANet: point-wise spatial attention (collect and distribute), pure PyTorch.

* PSANet: Point-wise Spatial Attention Network for Scene Parsing (Zhao et al., ECCV
  2018) — https://hszhao.github.io/papers/eccv18_psanet.pdf; official code
  ``hszhao/semseg`` (``model/psanet.py``, ``lib/psa``); mmseg's ``PSAHead``
  (``psa_head.py``) with mmcv's compiled ``mmcv.ops.PSAMask``. This block needs no
  compiled op.

Every position ``p`` *predicts* its own attention mask over the positions at a relative
offset ``δ`` inside an ``mh × mw`` window (``δ ∈ [−c_h, mh−1−c_h] ×
[−c_w, mw−1−c_w]``, ``c = (m − 1) // 2``). Two branches use such masks in opposite directions; for each
(``X`` ``(N, C, H, W)``, ``u``, ``z`` flattened over the ``L = h·w`` positions):

=================  ==========================================================
step               what it computes (``b`` ∈ {collect, distribute})
=================  ==========================================================
reduce             ``u_b = reduce_b(X)`` (1×1 conv + norm + act, C → c)
shrink             ``u_b`` bilinearly resized to ``(h, w)`` (``shrink_factor``
                   s; mmseg's rule: ``⌈H/s⌉×⌈W/s⌉`` with ``align_corners=True``
                   when *both* H, W are not multiples of s, else ``⌊H/s⌋×⌊W/s⌋``
                   with ``align_corners=False``)
mask               ``m_b = attention_b(u_b)`` (1×1 conv + norm + act, 1×1 conv
                   without bias, c → ``mh·mw``): ``m_b[p, δ]``
over-completion    the ``L×L`` logits ``a_b[p, q] = m_b[p, q − p]`` if ``q − p``
                   lies in the window, else ``0`` (``outside_mask='zero'``,
                   mmcv's / the official ``PSAMask``) or ``−∞``
                   (``'exclude'``); ``p`` owns the mask, ``q`` is the other end
normalisation      ``psa_softmax``: collect ``w[p, ·] = softmax_q a[p, ·]`` (the
                   receiver's weights over senders), distribute ``w[·, q] =
                   softmax_p a[·, q]`` (over the senders, each with its own mask)
aggregation        collect ``z_p = (1/ν) Σ_q w[p, q] u_q`` (``p`` collects);
                   distribute ``z_q = (1/ν) Σ_p w[p, q] u_p`` (``p`` distributes);
                   ``ν = normalization_factor`` (``None``: ``mh·mw``)
projection         ``o = proj(cat[z_collect, z_distribute])`` (1×1 conv + norm +
                   act, → C), resized back to ``(H, W)``
fusion (the head)  ``bottleneck(cat[X, o])`` — :class:`~mmctx.models.heads.
                   PointwiseSpatialHead`, as mmseg's ``PSAHead``
=================  ==========================================================

``compact=True`` (a fixed input size, ``mh·mw = h·w``): the mask channels index
absolute positions, ``a[p, q] = m[p, q]``.

What happens at any input size: the mask need not cover the map (mmcv's ``PSAMask``
only needs ``mh·mw`` channels; the official code asserts ``m ≤ 2·size − 1``, mmseg
nothing). A mask larger than ``2h−1 × 2w−1`` has entries that point outside the map:
they are dropped. A smaller one leaves pairs ``(p, q)`` outside the window: with
``outside_mask='zero'`` (mmseg / mmcv / official, so e.g. mmseg's Cityscapes 97×97 mask
on its 32×64 training map, and every whole-image test) they are a logit 0 — after the
softmax a *non-zero* weight ``1/Z_p`` each, not "no attention"; ``'exclude'`` gives
them weight 0 (a choice of mmctx, not mmseg's; with ``psa_softmax=False`` the two are
the same, so ``'exclude'`` is refused there). ``compact`` is refused unless the map is
exactly ``mask_size``.

Memory: the over-completion is not a scatter into a zero buffer: per chunk of owner
rows, each position's window is re-centred (``F.pad``, negative pads crop) into the
``(2h−1) × (2w−1)`` window that covers the map from any position, and the ``(p, q)``
logits are a zero-copy diagonal ``as_strided`` view of it, copied once into the
``L×L`` logits; its backward is the same view of a zero buffer, cropped back (a
custom ``autograd.Function`` that saves only shapes). Kept for backward: the
normalised ``(N, L, L)`` map (the input of the aggregation, inherent to PSANet) — not
the mask (mmcv's ``PSAMask`` saves it) nor the logits. The peak in forward is mmseg's
(mask + logits + normalised map, plus one chunk). The ``L×L`` logits are formed (the
softmax runs over a whole row or column of them); a fully windowed form would cost
``mh·mw`` per position, more than ``L`` for mmseg's masks (97² = 9409 > 32·64).

Key map: the block keeps mmseg ``PSAHead``'s names (``reduce``, ``attention``,
``reduce_p``, ``attention_p`` — the distribute branch of ``'bi-direction'`` — and
``proj``, the ``ConvModule`` layouts alike); the head stores the block as
``psa_block``, so a ``PSAHead`` checkpoint converts by the prefix rename
``decode_head.<name>.`` → ``decode_head.psa_block.<name>.`` (``bottleneck``,
``conv_seg`` unchanged; ``tools/convert_upstream.py``).

Note:
    * ``proj`` is mmseg's 1×1 conv **with padding 1** (its output is ``(h+2)×(w+2)``,
      the border is ``act(norm(0))``, then resized); the official ``PSA`` has no
      padding. Kept for parity with mmseg's checkpoints.
    * mmseg's shrink rule above and its reuse of the shrink's ``align_corners`` for
      the final resize (the head's ``align_corners`` only with ``shrink_factor=1``) are
      kept; the official code always uses ``⌈·/s⌉`` and ``align_corners=True`` and
      needs ``8k+1`` inputs.
    * ``compact`` with a single branch: mmseg transposes the mask for
      ``psa_type='collect'``; the official code (``psa_type == 1``, distribute) and
      mmseg's own bi-direction branch transpose it for **distribute**. This block
      follows the official meaning (both: ``a[p, q] = m[p, q]``, the mask owned by
      the receiver ``p`` for collect, by the sender ``p`` for distribute), so an
      mmseg single-branch compact checkpoint loads into the *other* ``psa_type``.
    * Logits, normalisation and aggregation run in fp32 (fp64 stays fp64) whatever
      the autocast state; the convs follow autocast. Only ``dim=2``.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from ...registry import MODELS
from ._base import (ContextBlockBase, check_bool, check_choice, check_int, no_autocast,
                    upcast)

PSA_TYPES = ('bi-direction', 'collect', 'distribute')
OUTSIDE = ('zero', 'exclude')
#: largest padded window chunk (elements) the over-completion forms at a time
CHUNK_ELEMENTS = 1 << 22

Maps = Dict[str, torch.Tensor]


def _mask_size(value: Sequence[int]) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f'mask_size must be an int or a pair (mh, mw) of ints >= 1, got '
                        f'{value!r}')
    return check_int('mask_size[0]', value[0]), check_int('mask_size[1]', value[1])


def _diagonal(full: torch.Tensor, start: int, h: int, w: int) -> torch.Tensor:
    """The ``(N, r, W, H, W)`` view ``[n, i, j, k, l] = full[n, i, j, k − (start + i) + H
    − 1, l − j + W − 1]`` of a re-centred chunk ``full`` ``(N, r, W, 2H−1, 2W−1)`` of
    owner rows ``start … start + r − 1``: the pairwise logits, no copy. ``full`` is a
    fresh contiguous tensor (its storage starts at it: offset 0, not read with
    ``storage_offset()``, which torch.compile cannot trace without a graph break)."""
    n, r = full.shape[:2]
    a, b = 2 * h - 1, 2 * w - 1
    s_n, s_h, s_w = r * w * a * b, w * a * b, a * b
    # owner row i of the chunk is row start + i of the map: its offset is absorbed by start
    return full.as_strided((n, r, w, h, w), (s_n, s_h - b, s_w - 1, b, 1),
                           (h - 1 - start) * b + (w - 1))


def _pads(h: int, w: int, mask_size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """``F.pad`` widths that re-centre an ``mh × mw`` window (offset ``δ`` at index
    ``δ + c``) onto the ``(2H−1) × (2W−1)`` one (``δ`` at ``δ + (H−1, W−1)``); negative
    widths crop a mask larger than that."""
    mh, mw = mask_size
    ch, cw = (mh - 1) // 2, (mw - 1) // 2
    return (w - 1 - cw, w - mw + cw, h - 1 - ch, h - mh + ch)


def _rows_per_chunk(n: int, h: int, w: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, n * w * (2 * h - 1) * (2 * w - 1)))


class _OverComplete(torch.autograd.Function):
    """:func:`over_complete`, with a backward of the same form (the diagonal view of a
    zero buffer receives the gradient, then the re-centring is undone); it saves only
    shapes."""

    @staticmethod
    def forward(ctx, mask: torch.Tensor, mask_size: Tuple[int, int],
                fill: float) -> torch.Tensor:
        n, _, h, w = mask.shape
        mh, mw = mask_size
        ctx.mask_size, ctx.spatial = mask_size, (h, w)
        window = mask.reshape(n, mh, mw, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, mh, mw)
        pads = _pads(h, w, mask_size)
        out = mask.new_empty(n, h, w, h, w)  # (N, H_p, W_p, H_q, W_q)
        rows = _rows_per_chunk(n, h, w)
        for start in range(0, h, rows):
            stop = min(h, start + rows)
            full = F.pad(window[:, start:stop], pads, value=fill).contiguous()
            out[:, start:stop].copy_(_diagonal(full, start, h, w))
        return out.reshape(n, h * w, h * w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (mh, mw), (h, w) = ctx.mask_size, ctx.spatial
        n = grad.shape[0]
        grad = grad.reshape(n, h, w, h, w)
        crop = tuple(-p for p in _pads(h, w, ctx.mask_size))  # undo the re-centring
        window = grad.new_empty(n, h, w, mh, mw)
        rows = _rows_per_chunk(n, h, w)
        for start in range(0, h, rows):
            stop = min(h, start + rows)
            full = grad.new_zeros(n, stop - start, w, 2 * h - 1, 2 * w - 1)
            _diagonal(full, start, h, w).copy_(grad[:, start:stop])
            window[:, start:stop] = F.pad(full, crop)  # offsets off the map: 0
        return window.permute(0, 3, 4, 1, 2).reshape(n, mh * mw, h, w), None, None


def over_complete(mask: torch.Tensor, mask_size: Tuple[int, int],
                  fill: float = 0.) -> torch.Tensor:
    """The per-position masks over relative offsets as the ``(N, L, L)`` pairwise logits
    ``a[n, p, q] = mask[n, q − p (window index), p]`` (``p``: the owner, rows; ``q``:
    the other end, columns; ``fill`` outside the window).

    Each position's window is re-centred (``F.pad``; negative pads crop) into the
    ``(2H−1) × (2W−1)`` window that covers the map from any position, a chunk of owner
    rows at a time (at most ``CHUNK_ELEMENTS``); the logits are a zero-copy diagonal
    ``as_strided`` view of it, copied once into the output.

    Shape:
        mask ``(N, mh·mw, H, W)`` → ``(N, H·W, H·W)``, both flattened row-major.
    """
    mh, mw = mask_size
    if mask.shape[1] != mh * mw:
        raise ValueError(f'a mask of size {mh}x{mw} needs {mh * mw} channels, got '
                         f'{mask.shape[1]}')
    return _OverComplete.apply(mask, (mh, mw), float(fill))


def psa_mask(mask: torch.Tensor, psa_type: str, mask_size: Sequence[int]) -> torch.Tensor:
    """mmcv's ``PSAMask(psa_type, mask_size)(mask)`` in pure PyTorch: ``(N, mh·mw, H,
    W)`` → ``(N, H·W, H, W)``, zero outside the window. ``'collect'``: channel ``q``
    at position ``p`` is ``a[p, q]``; ``'distribute'``: channel ``p`` at position ``q``."""
    check_choice('psa_type', psa_type, ('collect', 'distribute'))
    n, _, h, w = mask.shape
    logits = over_complete(mask, _mask_size(mask_size))  # (N, L_p, L_q)
    if psa_type == 'collect':
        logits = logits.transpose(1, 2)
    return logits.reshape(n, h * w, h, w)


def shrunk_size(h: int, w: int, shrink_factor: int,
                align_corners: bool) -> Tuple[int, int, bool]:
    """mmseg ``PSAHead``'s attention map size and the ``align_corners`` of its resizes."""
    s = shrink_factor
    if s == 1:
        return h, w, align_corners
    if h % s and w % s:
        return (h - 1) // s + 1, (w - 1) // s + 1, True
    if h < s or w < s:
        raise ValueError(f'shrink_factor={s} leaves no positions of a {h}x{w} map (mmseg '
                         f'floors it when H or W is a multiple of {s}); use a larger '
                         'input or a smaller shrink_factor')
    return h // s, w // s, False


@MODELS.register_module()
class PointwiseSpatialBlock(ContextBlockBase):
    """PSANet's point-wise spatial attention (see the module docstring).

    Args:
        in_channels: input (and output) channels C.
        channels: the reduced width c of each branch; ``None``: ``max(1, C // 4)``
            (mmseg / official: 512 at C = 2048).
        mask_size: ``(mh, mw)`` of each position's mask (mmseg: 97×97 for Cityscapes
            512×1024, 66×66 for ADE20K 512×512, both at output stride 8; the official
            code: ``2·map − 1``). Any input size works (module docstring).
        psa_type: ``'bi-direction'`` (both branches), ``'collect'`` or
            ``'distribute'``.
        compact: masks over absolute positions (fixed input: ``mh·mw`` = the shrunk
            map's ``h·w``).
        shrink_factor: s, the attention runs on the map resized by ``1/s``.
        normalization_factor: ν (``None``: ``mh·mw``).
        psa_softmax: softmax-normalise the over-completed map (else it is used raw).
        outside_mask: the logit of pairs outside a mask window, ``'zero'`` (mmseg /
            mmcv / official) or ``'exclude'`` (weight 0).
        conv_cfg, norm_cfg, act_cfg: of the ``ConvModule`` layers (mmseg: the head's).
        align_corners: the final resize's with ``shrink_factor=1`` (the head's).
        dim: spatial rank; only 2.

    Shape:
        ``(N, C, H, W)`` → ``(N, C, H, W)``: the projected context ``o``, not ``X + o``
        (``residual = False``): PSANet fuses it by concatenation, in the head.
    """

    _abbr_ = 'psa_block'
    residual = False
    fixed_size_reason = (
        "its attention-map size and resize align_corners follow mmseg's PSAHead, which "
        'picks them by the parity of H and W, and the over-completion loops over chunks '
        'of rows whose count depends on the size')

    def __init__(self, in_channels: int, channels: Optional[int] = None,
                 mask_size: Sequence[int] = (97, 97), psa_type: str = 'bi-direction',
                 compact: bool = False, shrink_factor: int = 2,
                 normalization_factor: Optional[float] = 1.0, psa_softmax: bool = True,
                 outside_mask: str = 'zero', conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU'), align_corners: bool = False,
                 dim: int = 2) -> None:
        super().__init__(in_channels, dim)
        if dim != 2:
            raise ValueError(f'PointwiseSpatialBlock needs dim=2 (its masks are 2-D '
                             f'windows), got dim={dim}')
        self.channels = (max(1, in_channels // 4) if channels is None
                         else check_int('channels', channels))
        self.mask_size = _mask_size(mask_size)
        self.psa_type = check_choice('psa_type', psa_type, PSA_TYPES)
        self.compact = check_bool('compact', compact)
        self.shrink_factor = check_int('shrink_factor', shrink_factor)
        self.psa_softmax = check_bool('psa_softmax', psa_softmax)
        self.outside_mask = check_choice('outside_mask', outside_mask, OUTSIDE)
        if outside_mask == 'exclude' and not psa_softmax:
            raise ValueError("outside_mask='exclude' sets the logit of pairs outside a mask "
                             "window to -inf for the softmax; with psa_softmax=False they "
                             "are 0 already: use outside_mask='zero'")
        if outside_mask == 'exclude' and compact:
            raise ValueError("outside_mask='exclude' needs compact=False (a compact mask "
                             'covers every pair)')
        mh, mw = self.mask_size
        if normalization_factor is None:
            normalization_factor = mh * mw
        if isinstance(normalization_factor, bool) or \
                not isinstance(normalization_factor, (int, float)) or normalization_factor <= 0:
            raise ValueError(f'normalization_factor must be None or a number > 0, got '
                             f'{normalization_factor!r}')
        self.normalization_factor = float(normalization_factor)
        self.align_corners = check_bool('align_corners', align_corners)
        cfgs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        c = self.channels

        def branch():
            return (ConvModule(in_channels, c, 1, **cfgs),
                    nn.Sequential(ConvModule(c, c, 1, **cfgs),
                                  nn.Conv2d(c, mh * mw, 1, bias=False)))

        # single-branch blocks name their branch as mmseg does, without ``_p``
        self.reduce, self.attention = branch()
        self.reduce_p, self.attention_p = branch() if psa_type == 'bi-direction' \
            else (None, None)
        width = c * (2 if psa_type == 'bi-direction' else 1)
        self.proj = ConvModule(width, in_channels, 1, padding=1, **cfgs)  # mmseg: pad 1
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmseg's: ``ConvModule.init_weights`` (Kaiming, norms 1/0) and PyTorch's
        default init for the mask convs."""
        for module in self.modules():
            if isinstance(module, ConvModule):
                module.init_weights()
        for seq in (self.attention, self.attention_p):
            if seq is not None:
                seq[1].reset_parameters()

    # ----------------------------------------------------------------- steps
    def logits(self, mask: torch.Tensor) -> torch.Tensor:
        """The ``(N, L, L)`` logits ``a[p, q]`` of a mask ``(N, mh·mw, h, w)`` (fp32)."""
        n, _, h, w = mask.shape
        if self.compact:
            if (h, w) != self.mask_size:
                raise ValueError(
                    f'compact=True needs the attention map to be mask_size='
                    f'{self.mask_size}, got {h}x{w} (after shrink_factor='
                    f'{self.shrink_factor}); use compact=False for other input sizes')
            return mask.reshape(n, h * w, h * w).transpose(1, 2)  # (N, p, q)
        fill = 0. if self.outside_mask == 'zero' else torch.finfo(mask.dtype).min
        return over_complete(mask, self.mask_size, fill)

    def branch(self, u: torch.Tensor, attention: nn.Module,
               kind: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """One branch on the shrunk ``u`` ``(N, c, h, w)``: the context ``z`` ``(N, c,
        h, w)`` and its normalised map ``A`` ``(N, L, L)`` with ``z_i = (1/ν) Σ_j A[i,
        j] u_j`` (rows: receiving positions, columns: sending)."""
        n, c, h, w = u.shape
        mask = attention(u)  # (N, mh·mw, h, w)
        with no_autocast(u):
            a = self.logits(upcast(mask))  # (N, L_p, L_q), p owns the mask
            del mask
            if self.psa_softmax:
                a = a.softmax(dim=2 if kind == 'collect' else 1)
            a = a if kind == 'collect' else a.transpose(1, 2)  # (N, receiver, sender)
            v = upcast(u).reshape(n, c, h * w).to(a.dtype)
            z = torch.bmm(v, a.transpose(1, 2)).reshape(n, c, h, w)  # (N, c, h, w)
            z = z * (1. / self.normalization_factor)
        return z.to(u.dtype), a

    def _forward(self, x: torch.Tensor, need_maps: bool) -> Tuple[torch.Tensor, Maps]:
        self.check_input(x)
        height, width = x.shape[2:]
        h, w, align = shrunk_size(height, width, self.shrink_factor, self.align_corners)
        names = (('collect', 'distribute') if self.psa_type == 'bi-direction'
                 else (self.psa_type, ))
        reduces = (self.reduce, self.reduce_p)
        attentions = (self.attention, self.attention_p)
        feats, maps = [], {}
        for name, reduce, attention in zip(names, reduces, attentions):
            u = reduce(x)
            if self.shrink_factor != 1:
                u = F.interpolate(u, size=(h, w), mode='bilinear', align_corners=align)
            z, a = self.branch(u, attention, name)
            feats.append(z)
            if need_maps:
                maps[name] = a * (1. / self.normalization_factor)
            del a
        out = self.proj(torch.cat(feats, dim=1))
        out = F.interpolate(out, size=(height, width), mode='bilinear', align_corners=align)
        return out, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, need_maps=False)[0]

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Maps]:
        """The output and ``{'collect': A_c, 'distribute': A_d}`` (the branches the block
        has), each ``(N, L, L)`` over the ``L = h·w`` positions of the *shrunk* map,
        rows receiving and columns sending: ``z_i = Σ_j A[i, j] u_j`` (``1/ν``
        included). With the softmax, every row of both sums to ``1/ν`` (collect:
        the receiver's own mask is normalised; distribute: the senders' masks,
        normalised over the senders of each receiver). mmseg's ``y`` (the ``bmm``
        operand, ``(N, L_send, L_recv)``) is ``A.transpose(1, 2) · ν``."""
        return self._forward(x, need_maps=True)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, channels={self.channels}, '
                f'mask_size={self.mask_size}, psa_type={self.psa_type!r}, '
                f'compact={self.compact}, shrink_factor={self.shrink_factor}, '
                f'normalization_factor={self.normalization_factor}, '
                f'psa_softmax={self.psa_softmax}, outside_mask={self.outside_mask!r}')
