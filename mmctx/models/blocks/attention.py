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
  of the map's memory until backward. On CPU without a gradient, when q/k and v
  differ in width, chunks of queries run instead (:func:`_chunked_attention`: no
  zero-padding, at most :data:`INFERENCE_CHUNK_ELEMENTS` logits at a time);
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

    Forward: ``S = (scale·q) kᵀ`` written into ``P``, softmax in place, ``y = P v``.
    Backward (``D_i = dy_i · y_i``): ``dv = Pᵀ dy``;
    per rows, in one reused ``rows × Lk`` buffer, ``dS = P ⊙ (dy vᵀ − D)``,
    ``dq = scale · dS k`` and ``dk += dSᵀ (scale·q)``. Exact (the same sums as the
    fused kernel, in another order); backward may run again (``retain_graph``); not
    twice differentiable.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                scale: float) -> torch.Tensor:
        batch, num_queries, _ = q.shape
        qs = q * scale
        weights = q.new_empty(batch, num_queries, k.shape[1])
        y = v.new_empty(batch, num_queries, v.shape[-1])
        for b in range(batch):  # whole-map products: the most efficient shapes here
            torch.mm(qs[b], k[b].t(), out=weights[b])
            torch.ops.aten._softmax.out(weights[b], -1, False, out=weights[b])  # in place
            torch.mm(weights[b], v[b], out=y[b])
        ctx.save_for_backward(qs, k, v, y, weights)
        ctx.scale = scale
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        qs, k, v, y, weights = ctx.saved_tensors
        dy = dy.contiguous()
        num_queries, rows = qs.shape[1], KEPT_MAP_ROWS
        delta = (dy * y).sum(dim=-1, keepdim=True)  # (B, Lq, 1)
        dq, dk, dv = torch.empty_like(qs), torch.empty_like(k), torch.empty_like(v)
        buffer = weights.new_empty(min(rows, num_queries), k.shape[1])
        for b in range(qs.shape[0]):
            torch.mm(weights[b].t(), dy[b], out=dv[b])
            vt = v[b].t()
            for start in range(0, num_queries, rows):
                part = weights[b, start:start + rows]
                grad = buffer[:part.shape[0]]  # dS rows (P is kept: backward may rerun)
                torch.mm(dy[b, start:start + rows], vt, out=grad)
                grad.sub_(delta[b, start:start + rows]).mul_(part)
                torch.mm(grad, k[b], out=dq[b, start:start + rows])
                if start == 0:
                    torch.mm(grad.t(), qs[b, start:start + rows], out=dk[b])
                else:
                    dk[b].addmm_(grad.t(), qs[b, start:start + rows])
        return dq.mul_(ctx.scale), dk, dv, None


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
    chunk's ``vᵀ Pᵀ``): the channels-first layout the blocks' convs take next."""
    batch, num_queries, num_keys = q.shape[0], q.shape[1], k.shape[1]
    qs = q * scale
    out = v.new_empty(batch, v.shape[-1], num_queries)  # (B, dv, Lq)
    per_image = num_queries * num_keys
    if per_image <= INFERENCE_CHUNK_ELEMENTS:  # whole images per chunk
        images = min(batch, INFERENCE_CHUNK_ELEMENTS // per_image)
        buffer = q.new_empty(images * per_image)
        for start in range(0, batch, images):
            stop = min(start + images, batch)
            logits = buffer[:(stop - start) * per_image].view(stop - start, num_queries,
                                                               num_keys)
            torch.bmm(qs[start:stop], k[start:stop].transpose(1, 2), out=logits)
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
        # the fused (flash) kernel needs one head size for q, k and v; a smaller one is
        # zero-padded (zeros change no dot product and give zero output columns)
        d, dv = q.shape[-1], v.shape[-1]
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
