"""The attention cores shared by every pairwise (query-specific) block.

Every function takes flattened tensors (any strides: each path makes contiguous copies only
where its kernel needs them) ``q (B, Lq, d)``, ``k (B, Lk, d)``,
``v (B, Lk, dv)`` and returns ``(y (B, Lq, dv), weights)``, where ``weights`` is the
``(B, Lq, Lk)`` attention map when ``need_weights=True`` (the *explicit* path, used
for analysis) and ``None`` otherwise (the *memory-efficient* path, the default):

* softmax modes (embedded Gaussian, Gaussian, DNL's pairwise term, LESA's augmented
  queries and keys): one ``scaled_dot_product_attention`` call on contiguous
  ``(B, 1, L, d)`` tensors with scaling and temperature folded into its ``scale`` — no
  ``Lq×Lk`` map is kept. The fused kernel needs one head size for q, k and v (else
  torch falls back to its map-materialising path): the smaller is zero-padded.
  On CPU in training (a gradient is needed) the fused kernel recomputes the map in backward,
  with small blocks; when the ``B×Lq×Lk`` map fits the *map budget*
  (:func:`map_budget_bytes`, default :data:`MAP_BUDGET_MB` MiB) the map is kept
  instead (:class:`KeptMapAttention`): forward and backward are then six large
  matrix products and no recomputation (on the 2-core EPYC of the README, NL
  forward+backward at 64×128 about 10 % faster than the fused kernel), at the cost
  of the map's memory until backward. The paths that write logits into a buffer pad
  the keys to a multiple of :data:`KEY_ALIGN` (masked: the same result). When q/k
  and v differ in width (DANet's PAM:
  64 vs 512), eager on CPU, chunks of queries run instead of the zero-padded fused
  kernel: without a gradient :func:`_chunked_attention` (at most
  :data:`INFERENCE_CHUNK_ELEMENTS` logits at a time), in training beyond the map budget
  :class:`ChunkedAttention` (its own backward, which recomputes only ``q kᵀ``; PAM's
  shapes at 64×128 forward+backward 1.4–1.8× faster than the padded fused kernel on the
  README's machine with chunks of 2²²–2²⁴ logits, about as fast as the kept map; with
  equal widths it measured no faster than the fused kernel, which therefore stays);
* dot product: ``(q kᵀ / Lk) v = q (kᵀ v) / Lk`` — re-associated, so time and memory
  are linear in the number of positions (stronger than chunking, same result up to
  rounding);
* concatenation: ``f_ij = ReLU(w_qᵀ q_i + w_kᵀ k_j) / Lk`` splits into a query and a
  key score; queries are processed in chunks of at most ``CHUNK_ELEMENTS`` pairs,
  each chunk recomputed in backward (activation checkpointing) so training does not
  keep the map either.

Logits and softmax run in fp32 whatever the autocast state (DNL divides the logits
by a temperature of 0.05; fp16/bf16 products would overflow or lose the map), and the
result is cast back to the dtype of ``v``.
"""
import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ._base import exporting, no_autocast, traced, upcast

Result = Tuple[torch.Tensor, Optional[torch.Tensor]]

#: largest number of (query, key) pairs one concatenation chunk materialises
CHUNK_ELEMENTS = 1 << 22

#: default map budget (MiB): in training, a softmax map of at most this size is kept for
#: backward instead of recomputed (see the module docstring). 512 MiB holds the map of
#: a 512×1024 crop at stride 8 (64×128 positions) for the 2 images per GPU of mmseg's
#: Cityscapes recipes. The environment variable ``MMCTX_MAP_BUDGET_MB`` overrides it
#: for a process, :func:`map_budget` for a region, a block's ``map_budget_mb`` for it.
MAP_BUDGET_MB = 512.
#: rows of the map one step of :class:`KeptMapAttention`'s backward handles (its working
#: buffer is ``rows × Lk``; 512 measured best among 256–8192 on the README's machine)
KEPT_MAP_ROWS = 512
_budget_override: Optional[float] = None
#: logits per query chunk of :func:`_chunked_attention` (64 MiB in fp32)
INFERENCE_CHUNK_ELEMENTS = 1 << 24
#: logits per chunk of :class:`ChunkedAttention` (training beyond the map budget; two
#: buffers of this size in backward, 32 MiB each in fp32). DANet's PAM shapes at 128×256
#: (d = 64, dv = 512) on the README's machine: 2²³–2²⁵ alike, 2²² 15–25 % slower
TRAINING_CHUNK_ELEMENTS = 1 << 23
#: the eager paths that write logits into a buffer (kept map, chunks) pad the keys to a
#: multiple of this many with zero keys whose logits are set to ``-inf`` (probability 0:
#: the same result): on the README's machine the products over a map whose rows are an
#: odd number of floats ran 7–24 % slower (97×97 positions, a 769×769 crop at stride 8).
#: Maps of fewer than ``16 × KEY_ALIGN`` keys are not padded (up to 6 % more work
#: otherwise; small maps, e.g. ISA's local groups, are not where the time goes)
KEY_ALIGN = 16


def pad_keys(k: torch.Tensor, v: torch.Tensor):
    """``k``, ``v`` (``(B, Lk, ·)``) with zero keys appended up to a multiple of
    :data:`KEY_ALIGN`; a transposed view of a channels-first tensor stays one."""
    pad = -k.shape[1] % KEY_ALIGN
    if not pad or k.shape[1] < 16 * KEY_ALIGN:
        return k, v

    def padded(t):
        if t.transpose(1, 2).is_contiguous():
            return F.pad(t.transpose(1, 2), (0, pad)).transpose(1, 2)
        return F.pad(t, (0, 0, 0, pad))

    return padded(k), padded(v)


def _mask_padding(logits: torch.Tensor, num_keys: int) -> None:
    """The logits of padded keys (past ``num_keys``) to ``-inf``, in place."""
    if logits.shape[-1] > num_keys:
        logits[..., num_keys:] = float('-inf')


def check_map_budget(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f'a map budget is a number of MiB >= 0, got {value!r}')
    return float(value)


def map_budget_bytes(budget_mb: Optional[float] = None) -> int:
    """The map budget in bytes: ``budget_mb`` if given, else the innermost
    :func:`map_budget` region's, else ``$MMCTX_MAP_BUDGET_MB``, else
    :data:`MAP_BUDGET_MB`. 0 turns keeping off (always the fused kernel)."""
    if budget_mb is None:
        budget_mb = _budget_override
    if budget_mb is None:
        env = os.environ.get('MMCTX_MAP_BUDGET_MB')
        if env is not None:
            try:
                budget_mb = float(env)
            except ValueError:
                raise ValueError('MMCTX_MAP_BUDGET_MB must be a number of MiB >= 0, got '
                                 f'{env!r}') from None
    budget_mb = check_map_budget(MAP_BUDGET_MB if budget_mb is None else budget_mb)
    return int(budget_mb * (1 << 20))


@contextlib.contextmanager
def map_budget(budget_mb: float) -> Iterator[None]:
    """A region with another map budget (MiB; 0: never keep the map)::

        with map_budget(0):   # the fused kernel, whatever the size
            loss = model(x).sum()
    """
    global _budget_override
    previous, _budget_override = _budget_override, check_map_budget(budget_mb)
    try:
        yield
    finally:
        _budget_override = previous


class KeptMapAttention(torch.autograd.Function):
    """``softmax(scale · q kᵀ) v`` that keeps the map ``P`` for backward.

    Forward: ``S = (scale·q) kᵀ`` written into ``P``, softmax in place, ``y = P v``
    (batched products over all images). Backward (``D_i = dy_i · y_i``): ``dv = Pᵀ dy``;
    per :data:`KEPT_MAP_ROWS` rows of one image (or as many whole small maps as fit in
    as many rows' logits, e.g. ISA's local groups), in one reused buffer,
    ``dS = P ⊙ (dy vᵀ − D)``,
    ``dq = scale · dS k`` and ``dk += dSᵀ (scale·q)``. The keys are padded to a multiple
    of :data:`KEY_ALIGN` (masked). Exact (the same sums as the fused kernel, in another
    order); backward may run again (``retain_graph``); not twice differentiable.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float) -> torch.Tensor:
        ctx.num_keys = k.shape[1]
        k, v = pad_keys(k, v)
        qs = q * scale
        batch, num_queries = q.shape[:2]
        weights = q.new_empty(batch, num_queries, k.shape[1])
        y = v.new_empty(batch, num_queries, v.shape[-1])
        # whole-map products: per image for large maps (as measured fastest), all images
        # at once for small ones (ISA's thousands of local groups: one batched product)
        step = max(1, batch) if num_queries < KEPT_MAP_ROWS else 1
        for b in range(0, batch, step):
            i = slice(b, b + step)
            torch.bmm(qs[i], k[i].transpose(1, 2), out=weights[i])
            _mask_padding(weights[i], ctx.num_keys)
            torch.ops.aten._softmax.out(weights[i], -1, False, out=weights[i])  # in place
            torch.bmm(weights[i], v[i], out=y[i])
        ctx.save_for_backward(qs, k, v, y, weights)
        ctx.scale = scale
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        qs, k, v, y, weights = ctx.saved_tensors
        dy = dy.contiguous()
        (batch, num_queries), num_keys = qs.shape[:2], k.shape[1]
        delta = (dy * y).sum(dim=-1, keepdim=True)  # (B, Lq, 1)
        dq, dk = torch.empty_like(qs), torch.zeros_like(k)
        dv = torch.bmm(weights.transpose(1, 2), dy)
        elements = KEPT_MAP_ROWS * num_keys  # rows of one image, or whole small images
        buffer = weights.new_empty(min(elements, batch * num_queries * num_keys))
        for i, r in ChunkedAttention.chunks(batch, num_queries, num_keys, elements):
            part = weights[i, r]
            grad = buffer[:part.numel()].view_as(part)  # dS (P is kept: backward may rerun)
            torch.bmm(dy[i, r], v[i].transpose(1, 2), out=grad)
            grad.sub_(delta[i, r]).mul_(part)
            torch.bmm(grad, k[i], out=dq[i, r])
            dk[i].baddbmm_(grad.transpose(1, 2), qs[i, r])
        keys = slice(0, ctx.num_keys)  # the padded keys' gradients are dropped
        return dq.mul_(ctx.scale), dk[:, keys], dv[:, keys], None


class ChunkedAttention(torch.autograd.Function):
    """``softmax(scale · q kᵀ [+ α[y_j] + β[x_j]]) v`` with a gradient, over chunks of
    at most ``elements`` logits, that keeps no map: the flash-attention backward, by hand.

    ``q (B, Lq, d)``, ``k (B, Lk, d)``, ``v (B, Lk, dv)`` (any widths: nothing is
    zero-padded); optionally LESA's 2-D relative logits ``α (B, Lq, H)``, ``β (B, Lq,
    W)`` for keys on an ``H×W`` grid (row-major), else ``None``. A chunk is some query
    rows of one image or, when whole images fit, as many images as fit (batched
    products). Forward: each chunk's logits in one buffer (the relative logits written
    first and ``q kᵀ`` accumulated onto them by the product), softmax in place, ``· v``
    into the output. Backward (``D_i = dy_i · y_i``) recomputes each chunk's ``P`` the
    same way (one product, ``q kᵀ``) and, in a second buffer, ``dS = P ⊙ (dy vᵀ − D)``;
    then ``dv += Pᵀ dy``, ``dq = scale · dS k``, ``dk += dSᵀ (scale · q)``, and ``dα``,
    ``dβ`` as ``dS``'s sums over the key grid's columns / rows. Two buffers for the
    whole call; exact (the fused kernel's sums in another order); backward may run again
    (``retain_graph``); not twice differentiable.
    """

    @staticmethod
    def probabilities(q, k, alpha, beta, buffer, valid: Optional[int] = None) -> torch.Tensor:
        """``P`` of one chunk (``q (n, c, d)`` already scaled, ``k (n, Lk, d)``, ``α (n,
        c, H)``, ``β (n, c, W)`` or ``None``) in ``buffer``: ``(n, c, Lk)``; keys past
        ``valid`` (default: all; with ``α``, ``β``: the ``H·W`` of the grid) are padding
        and get probability 0."""
        n, c, num_keys = q.shape[0], q.shape[1], k.shape[1]
        p = buffer[:n * c * num_keys].view(n, c, num_keys)
        if alpha is None:
            valid = num_keys if valid is None else valid
            torch.bmm(q, k.transpose(1, 2), out=p)
        else:  # the relative logits of the real keys (a grid), then q kᵀ onto them
            valid = alpha.shape[-1] * beta.shape[-1]
            torch.add(alpha.unsqueeze(-1), beta.unsqueeze(-2),
                      out=p[..., :valid].view(n, c, alpha.shape[-1], beta.shape[-1]))
            torch.baddbmm(p, q, k.transpose(1, 2), out=p)
        _mask_padding(p, valid)
        torch.ops.aten._softmax.out(p, -1, False, out=p)  # in place
        return p

    @staticmethod
    def chunks(batch: int, num_queries: int, num_keys: int, elements: int):
        """``(images, queries)`` slices of the chunks of at most ``elements`` logits."""
        per_image = num_queries * num_keys
        if per_image <= elements:  # whole images per chunk
            images = max(1, min(batch, elements // max(1, per_image)))
            for start in range(0, batch, images):
                yield slice(start, start + images), slice(0, num_queries)
            return
        rows = max(1, elements // num_keys)
        for b in range(batch):
            for start in range(0, num_queries, rows):
                yield slice(b, b + 1), slice(start, start + rows)

    @staticmethod
    def forward(ctx, q, k, v, alpha, beta, scale: float, elements: int):
        ctx.num_keys = k.shape[1]
        k, v = pad_keys(k, v)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        qs = q * scale if scale != 1 else q
        (batch, num_queries), num_keys = q.shape[:2], k.shape[1]
        out = v.new_empty(batch, num_queries, v.shape[-1])
        buffer = q.new_empty(min(elements, batch * num_queries * num_keys))
        for i, r in ChunkedAttention.chunks(batch, num_queries, num_keys, elements):
            p = ChunkedAttention.probabilities(
                qs[i, r], k[i], None if alpha is None else alpha[i, r],
                None if beta is None else beta[i, r], buffer, ctx.num_keys)
            torch.bmm(p, v[i], out=out[i, r])
        ctx.save_for_backward(qs, k, v, alpha, beta, out)
        ctx.scale, ctx.elements = scale, elements
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        qs, k, v, alpha, beta, out = ctx.saved_tensors
        (batch, num_queries), num_keys = qs.shape[:2], k.shape[1]
        dy = dy.contiguous()
        delta = (dy * out).sum(-1, keepdim=True)  # (B, Lq, 1)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        relative = alpha is not None
        if relative:
            dalpha, dbeta = torch.empty_like(alpha), torch.empty_like(beta)
        size = min(ctx.elements, batch * num_queries * num_keys)
        probs, grads = qs.new_empty(size), qs.new_empty(size)
        for i, r in ChunkedAttention.chunks(batch, num_queries, num_keys, ctx.elements):
            p = ChunkedAttention.probabilities(
                qs[i, r], k[i], alpha[i, r] if relative else None,
                beta[i, r] if relative else None, probs, ctx.num_keys)
            dv[i].baddbmm_(p.transpose(1, 2), dy[i, r])
            ds = grads[:p.numel()].view_as(p)
            torch.bmm(dy[i, r], v[i].transpose(1, 2), out=ds)
            ds.sub_(delta[i, r]).mul_(p)
            torch.bmm(ds, k[i], out=dq[i, r])
            dk[i].baddbmm_(ds.transpose(1, 2), qs[i, r])
            if relative:
                grid = ds[..., :ctx.num_keys].view(*ds.shape[:2], alpha.shape[-1],
                                                   beta.shape[-1])
                torch.sum(grid, -1, out=dalpha[i, r])
                torch.sum(grid, -2, out=dbeta[i, r])
        if ctx.scale != 1:
            dq.mul_(ctx.scale)
        keys = slice(0, ctx.num_keys)  # the padded keys' gradients are dropped
        if not relative:
            return dq, dk[:, keys], dv[:, keys], None, None, None, None
        return dq, dk[:, keys], dv[:, keys], dalpha, dbeta, None, None


def _eager_cpu(q: torch.Tensor) -> bool:
    """On CPU and not traced: the paths with Python loops may run. Traced graphs take
    the fused kernel (one op, no Python loop; the FLOP counters of mmctx.analysis and
    tools/benchmark_blocks.py see it as the attention); CUDA's fused kernels are left
    to do their own work."""
    return q.device.type == 'cpu' and not traced()


def _needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                        or v.requires_grad)


def _keeps_map(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               budget_mb: Optional[float]) -> bool:
    """Eager on CPU, in training (a gradient reaches q, k or v), and the map fits the
    budget."""
    if not (_eager_cpu(q) and _needs_grad(q, k, v)):
        return False
    size = q.shape[0] * q.shape[1] * k.shape[1] * q.element_size()
    return size <= map_budget_bytes(budget_mb)


def _chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """``softmax(scale · q kᵀ) v`` without a gradient over chunks of queries, at most
    :data:`INFERENCE_CHUNK_ELEMENTS` logits per chunk, one buffer for all chunks:
    ``2·L²·(d + dv)`` FLOPs where the fused kernel on q/k zero-padded to ``dv`` runs
    ``4·L²·dv`` (DANet's PAM: d = 64, dv = 512 — 1.8× the work). A chunk is part of
    one image's queries or, when whole images fit, as many images as fit (batched
    products: ISA's 8×8 local groups are thousands of 64×64 maps).

    ``q``, ``k``, ``v`` may be any strided views (e.g. ``(N, C, L)`` conv outputs
    transposed: the products read them as they are, no copy), and the result is
    ``(B, Lq, dv)`` as a transposed view of a contiguous ``(B, dv, Lq)`` tensor (each
    chunk's ``vᵀ Pᵀ``): the channels-first layout the blocks' convs take next. The keys
    are padded to a multiple of :data:`KEY_ALIGN` (masked)."""
    valid = k.shape[1]
    k, v = pad_keys(k, v)
    batch, num_queries, num_keys = q.shape[0], q.shape[1], k.shape[1]
    qs = q * scale
    out = v.new_empty(batch, v.shape[-1], num_queries)  # (B, dv, Lq)
    per_image = num_queries * num_keys
    if per_image <= INFERENCE_CHUNK_ELEMENTS:  # whole images per chunk
        images = max(1, min(batch, INFERENCE_CHUNK_ELEMENTS // max(1, per_image)))
        buffer = q.new_empty(images * per_image)
        for start in range(0, batch, images):
            stop = min(start + images, batch)
            logits = buffer[:(stop - start) * per_image].view(stop - start, num_queries,
                                                               num_keys)
            torch.bmm(qs[start:stop], k[start:stop].transpose(1, 2), out=logits)
            _mask_padding(logits, valid)
            torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # in place
            torch.bmm(v[start:stop].transpose(1, 2), logits.transpose(1, 2),
                      out=out[start:stop])
        return out.transpose(1, 2)
    rows = max(1, INFERENCE_CHUNK_ELEMENTS // num_keys)
    buffer = q.new_empty(rows * num_keys)
    for b in range(batch):
        kt, vt = k[b].t(), v[b].t()
        for start in range(0, num_queries, rows):
            stop = min(start + rows, num_queries)
            logits = buffer[:(stop - start) * num_keys].view(stop - start, num_keys)
            torch.mm(qs[b, start:stop], kt, out=logits)
            _mask_padding(logits, valid)
            torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # in place
            torch.mm(vt, logits.t(), out=out[b, :, start:stop])
    return out.transpose(1, 2)


def _fp32(*tensors: torch.Tensor):
    """Half-precision tensors to fp32 (fp32 / fp64 stay as they are), contiguous."""
    return [upcast(t).contiguous() for t in tensors]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      need_weights: bool = False,
                      budget_mb: Optional[float] = None) -> Result:
    """``softmax(scale · q kᵀ) v`` over keys.

    ``budget_mb``: the map budget of this call (see :func:`map_budget_bytes`; None:
    the region's / process's / default)."""
    dtype = v.dtype
    with no_autocast(q):
        if (q.shape[-1] != v.shape[-1] and _eager_cpu(q) and not need_weights
                and not _needs_grad(q, k, v)):
            # the fused kernel would need q/k zero-padded to the value width; the
            # chunks read strided inputs as they are
            return _chunked_attention(upcast(q), upcast(k), upcast(v),
                                      float(scale)).to(dtype), None
        q, k, v = _fp32(q, k, v)
        if need_weights:
            weights = torch.bmm(q, k.transpose(1, 2)).mul_(scale).softmax(dim=-1)
            return torch.bmm(weights, v).to(dtype), weights
        if _keeps_map(q, k, v, budget_mb):
            return KeptMapAttention.apply(q, k, v, float(scale)).to(dtype), None
        d, dv = q.shape[-1], v.shape[-1]
        if d != dv and _eager_cpu(q):  # training beyond the budget: nothing zero-padded
            return ChunkedAttention.apply(q, k, v, None, None, float(scale),
                                          TRAINING_CHUNK_ELEMENTS).to(dtype), None
        # the fused (flash) kernel needs one head size for q, k and v; a smaller one is
        # zero-padded (zeros change no dot product and give zero output columns)
        if d < dv:
            q, k = F.pad(q, (0, dv - d)), F.pad(k, (0, dv - d))
        elif dv < d:
            v = F.pad(v, (0, d - dv))
        # (B, 1, L, d) views of contiguous tensors are contiguous: flash path on CPU
        y = F.scaled_dot_product_attention(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=scale)
        return y.squeeze(1)[..., :dv].to(dtype), None


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          need_weights: bool = False) -> Result:
    """``(q kᵀ / Lk) v`` (mmcv ``dot_product``: normalised by the key count)."""
    dtype = v.dtype
    num_keys = k.shape[1]
    with no_autocast(q):
        q, k, v = _fp32(q, k, v)
        if need_weights:
            weights = torch.bmm(q, k.transpose(1, 2)).div_(num_keys)
            return torch.bmm(weights, v).to(dtype), weights
        kv = torch.bmm(k.transpose(1, 2), v).div_(num_keys)  # (B, d, dv)
        return torch.bmm(q, kv).to(dtype), None


def _concat_chunk(q_score: torch.Tensor, k_score: torch.Tensor,
                  v: torch.Tensor) -> torch.Tensor:
    # (B, c, 1) + (B, 1, Lk) -> (B, c, Lk) -> (B, c, dv)
    weights = torch.relu(q_score.unsqueeze(2) + k_score.unsqueeze(1))
    return torch.bmm(weights, v)


def concatenation_attention(q_score: torch.Tensor, k_score: torch.Tensor,
                            v: torch.Tensor, need_weights: bool = False,
                            chunk_elements: Optional[int] = None) -> Result:
    """``Σ_j ReLU(a_i + b_j) v_j / Lk`` with ``a = w_qᵀq`` ``(B, Lq)``, ``b = w_kᵀk`` ``(B, Lk)``.

    mmcv's ``concatenation`` mode applies ``ReLU(wᵀ[q_i; k_j])`` (a 1×1 conv without
    bias on the concatenated pair), which is exactly ``ReLU(a_i + b_j)``.
    """
    dtype = v.dtype
    num_queries, num_keys = q_score.shape[1], k_score.shape[1]
    with no_autocast(v):
        q_score, k_score, v = _fp32(q_score, k_score, v)
        if need_weights:
            weights = torch.relu(q_score.unsqueeze(2) + k_score.unsqueeze(1)) / num_keys
            return torch.bmm(weights, v).to(dtype), weights
        if exporting():  # one chunk (see exporting()): the chunk count depends on Lq
            return _concat_chunk(q_score, k_score, v).div_(num_keys).to(dtype), None
        budget = CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
        step = max(1, budget // max(1, num_keys * q_score.shape[0]))
        grad = torch.is_grad_enabled() and (q_score.requires_grad or k_score.requires_grad
                                           or v.requires_grad)
        chunks = []
        for start in range(0, num_queries, step):
            part = q_score[:, start:start + step]
            if grad:
                chunks.append(checkpoint(_concat_chunk, part, k_score, v,
                                         use_reentrant=False))
            else:
                chunks.append(_concat_chunk(part, k_score, v))
        y = torch.cat(chunks, dim=1).div_(num_keys)
        return y.to(dtype), None
