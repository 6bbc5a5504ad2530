"""What each context term of a block adds to its output, before fusion.

A block's context modeling can have several terms (DNL: a query-specific *pairwise*
term and a query-independent *unary* term; LESA: a local unary and a binary term).
``term_contributions(block, x)`` returns, for each term ``t``, the tensor ``c_t``
``(N, C, *S)`` that the term adds to the block's output: the block output is
``fusion(x, Σ_t c_t + b)`` where ``b`` is a bias that belongs to no term (for example
the folded bias of an output conv + BN), so the terms' contributions are comparable.

The functions live in a small registry keyed by block class (looked up along the
MRO), so a new block — e.g. LESA — plugs in with::

    @register_term_contributions(LesaBlock)
    def _lesa_terms(block, x):
        return {'unary': ..., 'binary': ...}
"""
from typing import Callable, Dict, Type

import torch
import torch.nn as nn

from ..models.blocks._base import upcast
from ..models.blocks.global_context import GlobalContextBlock
from ..models.blocks.lesa import LESABlock
from ..models.blocks.non_local import PairwiseContextBlock, unflatten

Contributions = Dict[str, torch.Tensor]
TERM_CONTRIBUTIONS: Dict[Type[nn.Module], Callable[[nn.Module, torch.Tensor],
                                                   Contributions]] = {}


def register_term_contributions(cls: Type[nn.Module]):
    """Decorator: register ``fn(block, x) -> {term: (N, C, *S)}`` for ``cls``."""

    def wrap(fn):
        TERM_CONTRIBUTIONS[cls] = fn
        return fn

    return wrap


def find_term_function(block: nn.Module):
    """The registered function for ``block``'s class (or a base class), or None."""
    for cls in type(block).__mro__:
        if cls in TERM_CONTRIBUTIONS:
            return TERM_CONTRIBUTIONS[cls]
    return None


@torch.no_grad()
def term_contributions(block: nn.Module, x: torch.Tensor) -> Contributions:
    """``{term: (N, C, *S)}``: each context term's additive contribution before fusion.

    Raises:
        TypeError: no function is registered for the block's class.
    """
    fn = find_term_function(block)
    if fn is None:
        raise TypeError(f'no term-contribution function registered for '
                        f'{type(block).__name__}; known: '
                        f'{sorted(c.__name__ for c in TERM_CONTRIBUTIONS)}')
    return fn(block, x)


@register_term_contributions(PairwiseContextBlock)
def _pairwise_block_terms(block: PairwiseContextBlock, x: torch.Tensor) -> Contributions:
    """NL / DNL / pairwise-only / unary-only.

    ``value='reduced'``: ``out = x + conv_out(y_pair + y_unary)``; ``conv_out`` (conv +
    eval-mode norm) is affine, ``conv_out(z) = A z + b``, so term ``t`` contributes
    ``A y_t = conv_out(y_t) − conv_out(0)`` and ``b`` belongs to no term.
    ``value='full'``: ``out = x + γ·y_pair + y_unary``, the contributions are
    ``γ·y_pair`` and ``y_unary``.
    """
    block.check_input(x)
    spatial = tuple(x.shape[2:])
    q, k, v = block.project(x)
    q_mean = None
    if q is not None:
        q, k, q_mean = block.whitening(q, k)
    ys = {}
    if block.pairwise:
        ys['pairwise'] = block.pairwise_term(q, k, v, need_weights=False)[0]
    if block.unary != 'none':
        weights = block.unary_weights(x, q_mean, k)
        ys['unary'] = torch.bmm(weights, upcast(v)).to(v.dtype)  # (N, 1, dv)
    out = {}
    if block.value == 'reduced':
        zero = block.conv_out(x.new_zeros((x.shape[0], v.shape[2]) + (1, ) * len(spatial)))
        for term, y in ys.items():
            c = block.conv_out(unflatten(y, spatial)) - zero
            out[term] = c.expand_as(x)
    else:
        for term, y in ys.items():
            c = unflatten(y, spatial)
            out[term] = (block.gamma * c if term == 'pairwise' else c).expand_as(x)
    return out


@register_term_contributions(GlobalContextBlock)
def _global_context_terms(block: GlobalContextBlock, x: torch.Tensor) -> Contributions:
    """GC / SNL / SE: one query-independent term.

    The contribution is the transform's output broadcast over positions: the added
    vector ``channel_add_conv(context)`` with add fusion; with multiplicative fusion
    only (SE), the gate ``sigmoid(channel_mul_conv(context))``.
    """
    block.check_input(x)
    context = block.context(x)
    if block.channel_add_conv is not None:
        c = block.channel_add_conv(context)
    else:
        c = torch.sigmoid(block.channel_mul_conv(context))
    return {'unary': c.expand_as(x)}


def _bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """The per-channel scale of an eval-mode BN (its affine map's slope)."""
    if bn.training or not bn.track_running_stats:
        raise ValueError('LESA own-position split: the output BN must use its running '
                         'statistics (put the block in eval mode)')
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


def lesa_own_position_split(block: LESABlock, x: torch.Tensor,
                            attention: torch.Tensor) -> Contributions:
    """The binary term ``B_i = BN(Σ_j a_ij v_j) (+ BN(Σ_j a_ij r^v_{i−j}))`` split
    into what comes from the query's own position ``j = i`` and from all others.

    ``B`` is affine in the aggregated values (eval-mode BN ``s·y + b``), so with
    ``y = y_own + y_others`` (``y_own,i = a_ii v_i``, classification form also ``a_ii
    r^v_0``) the parts are ``s·y_own`` and ``s·y_others``; the BN shift ``b`` belongs
    to neither. ``attention (N, heads, L, L)`` is the block's explicit attention."""
    n, _, h, w = x.shape
    g, length = block.num_heads, h * w
    _, _, v = block.qkv(x)  # (N, g, L, dv)
    v = upcast(v)
    attention = attention.to(v.dtype)
    own = torch.diagonal(attention, dim1=-2, dim2=-1).unsqueeze(-1)  # (N, g, L, 1)
    sv_own, sv_all = own * v, attention @ v

    def channels(y):  # (N, g, L, dv) -> (N, C, L), head-major as the block's BN
        return y.permute(0, 1, 3, 2).reshape(n, -1, length)

    scale = _bn_scale(block.bn_output).to(v.dtype)
    if block.pe_type == 'classification':
        emb = block._classification_embeddings()[2].to(v.dtype)  # (dv, L, L): r^v_{i-j}
        sve_all = torch.einsum('ngij,dij->ngid', attention, emb)
        sve_own = own * torch.diagonal(emb, dim1=1, dim2=2).t()  # a_ii r^v_0
        parts = {}
        for name, a, b in (('own position', sv_own, sve_own),
                           ('other positions', sv_all - sv_own, sve_all - sve_own)):
            both = torch.stack([channels(a), channels(b)], dim=2)  # (N, C, 2, L)
            both = both * scale.view(1, -1, 2, 1)
            parts[name] = both.sum(2)
    else:
        parts = {'own position': channels(sv_own) * scale.view(1, -1, 1),
                 'other positions': channels(sv_all - sv_own) * scale.view(1, -1, 1)}
    return {k: p.view(n, -1, h, w).to(x.dtype) for k, p in parts.items()}


@register_term_contributions(LESABlock)
def _lesa_terms(block: LESABlock, x: torch.Tensor) -> Contributions:
    """LESA's output is ``pool(U + g ⊙ B)``: the unary term ``U`` and the gated binary
    term ``g ⊙ B`` (``B`` with ``fusion='sum'``), each average-pooled as the output.
    For the self-attention-only arm (``unary=False``: ``out = B``) the two "terms" are
    the query's own position and all other positions
    (:func:`lesa_own_position_split`)."""
    terms = block.terms(x)
    out = {}
    if 'unary' in terms:
        out['unary'] = terms['unary']
        if 'binary' in terms:
            out['binary'] = terms['binary'] * terms['gate'] if 'gate' in terms \
                else terms['binary']
    else:
        out = lesa_own_position_split(block, x, terms['attention'])
    if block.pooling is not None:
        out = {k: block.pooling(v) for k, v in out.items()}
    return out


@torch.no_grad()
def block_statistics(block: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-block tensors the term analysis summarises besides the contributions:
    LESA's gate ``σ(...)`` ``(N, C, H, W)`` (``'gate'``) and, for its self-attention
    arms, the head-averaged attention on the query's own position ``a_ii`` ``(N, L)``
    (``'own_attention'``). Empty for other blocks."""
    if not isinstance(block, LESABlock) or not block.binary:
        return {}
    terms = block.terms(x)
    out = {'own_attention': torch.diagonal(terms['attention'], dim1=-2,
                                           dim2=-1).mean(1)}
    if 'gate' in terms:
        out['gate'] = terms['gate']
    return out
