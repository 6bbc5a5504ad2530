"""The attention cores shared by every pairwise (query-specific) block.

Every function takes flattened, contiguous tensors ``q (B, Lq, d)``, ``k (B, Lk, d)``,
``v (B, Lk, dv)`` and returns ``(y (B, Lq, dv), weights)``, where ``weights`` is the
``(B, Lq, Lk)`` attention map when ``need_weights=True`` (the *explicit* path, used
for analysis) and ``None`` otherwise (the *memory-efficient* path, the default):

* softmax modes (embedded Gaussian, Gaussian, DNL's pairwise term, LESA's augmented
  queries and keys): one ``scaled_dot_product_attention`` call on contiguous
  ``(B, 1, L, d)`` tensors with scaling and temperature folded into its ``scale`` — no
  ``Lq×Lk`` map is kept. The fused kernel needs one head size for q, k and v (else
  torch falls back to its map-materialising path): the smaller is zero-padded;
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
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._base import exporting, no_autocast, upcast

Result = Tuple[torch.Tensor, Optional[torch.Tensor]]

#: largest number of (query, key) pairs one concatenation chunk materialises
CHUNK_ELEMENTS = 1 << 22


def _fp32(*tensors: torch.Tensor):
    """Half-precision tensors to fp32 (fp32 / fp64 stay as they are), contiguous."""
    return [upcast(t).contiguous() for t in tensors]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      need_weights: bool = False) -> Result:
    """``softmax(scale · q kᵀ) v`` over keys."""
    dtype = v.dtype
    with no_autocast(q):
        q, k, v = _fp32(q, k, v)
        if need_weights:
            weights = torch.bmm(q, k.transpose(1, 2)).mul_(scale).softmax(dim=-1)
            return torch.bmm(weights, v).to(dtype), weights
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
