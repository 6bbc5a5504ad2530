"""Attention of mmctx blocks in a trained segmentor: maps, query independence, term shares.

The analyses of the DNL paper (attention maps of a query with the pairwise and unary
terms shown separately) and of GCNet (§3.2, Table 1: are the attention maps of
different query positions the same?), for any mmseg segmentor with mmctx blocks —
in a ``ContextHead``, a ``ContextNeck`` or as backbone plugins.

The maps come from the blocks' explicit path (``forward_with_attention``), re-run by
forward hooks on each block's input during a normal forward pass; the model code is
not changed. Every block of :mod:`mmctx.models.blocks` has that path:

* NL / DNL / pairwise-only / unary-only: ``pairwise`` ``(N, Lq, Lk)`` and/or
  ``unary`` ``(N, 1, Lk)``. The pairwise maps of the softmax modes (embedded
  Gaussian, Gaussian, DNL) are distributions over keys; those of NL's
  ``dot_product`` and ``concatenation`` modes are not softmax-normalised — they are
  the raw weights ``f_ij / Lk`` (rows need not sum to 1, dot product can be negative).
* GC / SNL: ``unary`` ``(N, 1, L)``, the attention-pooling weights.
* SE: average pooling — a fixed uniform ``unary`` map ``1 / L``, not learned.
"""
import glob as glob_module
import math
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .terms import block_statistics, find_term_function, term_contributions

ImageLike = Union[str, np.ndarray]
#: entries of a ``collect_attention`` record that are not attention terms
#: record keys that are not maps over positions ('channel': DANet's C×C channel map)
NON_TERM_KEYS = ('shape', 'key_shape', 'input', 'output', 'statistics', 'channel',
                 'offsets')
#: refuse explicit maps larger than this many elements per block (fp32: 4 bytes each)
MAX_MAP_ELEMENTS = 1 << 28


# ----------------------------------------------------------------------- model / data
def load_segmentor(config, checkpoint: Optional[str], device: str = 'cpu',
                   cfg_options: Optional[dict] = None) -> nn.Module:
    """An mmseg segmentor from a config (path or ``Config``) and a checkpoint, in eval mode.

    ``SyncBN`` entries are turned into ``BN`` (any nesting), so checkpoints trained on
    GPUs load on a CPU. ``checkpoint=None`` keeps the initial weights (for tests).
    ``model.cfg`` holds the config (its test pipeline prepares images).
    """
    from mmengine.config import Config
    from mmseg.apis import init_model

    import mmctx  # noqa: F401  (registers the blocks; allowlists checkpoint contents)
    from mmctx.utils import syncbn_to_bn
    if isinstance(config, str):
        if not osp.isfile(config):
            raise FileNotFoundError(f'no such config file: {config}')
        config = Config.fromfile(config)
    elif not isinstance(config, Config):
        raise TypeError(f'config must be a path or an mmengine Config, got '
                        f'{type(config).__name__}')
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'no such checkpoint file: {checkpoint}')
    if cfg_options:
        config.merge_from_dict(cfg_options)
    syncbn_to_bn(config._cfg_dict)
    upstream = _upstream_head(config)
    if upstream is None:
        model = init_model(config, checkpoint, device=device)
        return model.eval()
    # an mmseg NL / DNL / GC / CC / DA model: its mmctx equivalent, the checkpoint
    # converted in memory (tools/convert_upstream.py's conversion, nothing written)
    from mmctx.models.convert import convert_mmseg_segmentor
    model = init_model(config, None, device=device)
    if checkpoint is not None:
        ckpt = torch.load(checkpoint, map_location=device, weights_only=True)
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
        converted, kind = convert_mmseg_segmentor(state)
        if kind != upstream:
            raise ValueError(f'the config has an mmseg {upstream}, the checkpoint holds '
                             f'a {kind}')
        model.load_state_dict(converted, strict=True)
    model.converted_from = upstream
    return model.eval()


def _upstream_head(config) -> Optional[str]:
    """Rewrite an mmseg head the converter knows to its mmctx equivalent in
    ``config`` (in place); returns the upstream head's name, or None."""
    from mmctx.models.convert import mmctx_head_config
    head = config.model.get('decode_head')
    if not isinstance(head, dict):
        return None
    new = mmctx_head_config(head)
    if new is None:
        return None
    kind = str(head['type']).split('.')[-1]
    config.model.decode_head = new
    return kind


def context_blocks(model: nn.Module) -> 'OrderedDict[str, nn.Module]':
    """The modules of ``model`` with an explicit attention path, by qualified name."""
    from ..models.blocks._base import ContextBlockBase
    blocks = OrderedDict()
    for name, module in model.named_modules():
        if isinstance(module, ContextBlockBase) and callable(
                getattr(module, 'forward_with_attention', None)):
            blocks[name] = module
    if not blocks:
        raise ValueError(
            f'{type(model).__name__} has no mmctx context block (a module of '
            'mmctx.models.blocks with forward_with_attention, e.g. in an '
            'mmctx.ContextHead, an mmctx.ContextNeck or a backbone plugin); '
            'nothing to analyse — is this a model built from an mmctx config?')
    return blocks


def _test_pipeline(model: nn.Module, from_array: bool):
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        raise ValueError('the model has no .cfg; load it with load_segmentor(config, ...)')
    steps = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    steps = [dict(s) for s in steps if s.get('type') != 'LoadAnnotations']
    if from_array:
        steps[0]['type'] = 'LoadImageFromNDArray'
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return Compose(steps)


def prepare_inputs(model: nn.Module, images: Union[ImageLike, Sequence[ImageLike]]):
    """Run image files or ``(H, W, 3)`` BGR uint8 arrays (mmcv's convention) through the
    config's test pipeline and the model's data preprocessor.

    Returns:
        ``(inputs (N, 3, H, W), data_samples)``; ``data_samples[i].metainfo`` has
        ``ori_shape`` / ``img_shape`` (size before / after the test resize).
    """
    if isinstance(images, (str, np.ndarray)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError('no images given')
    for img in images:
        if isinstance(img, str) and not osp.isfile(img):
            raise FileNotFoundError(f'no such image file: {img}')
    if len({isinstance(i, np.ndarray) for i in images}) > 1:
        raise TypeError('give either image paths or arrays, not both')
    pipeline = _test_pipeline(model, isinstance(images[0], np.ndarray))
    data = dict(inputs=[], data_samples=[])
    for img in images:
        packed = pipeline(dict(img=img) if isinstance(img, np.ndarray) else dict(img_path=img))
        data['inputs'].append(packed['inputs'])
        data['data_samples'].append(packed['data_samples'])
    with torch.no_grad():
        data = model.data_preprocessor(data, False)
    return data['inputs'], data['data_samples']


# -------------------------------------------------------------------------- collecting
def _key_shape(block: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    pool = getattr(block, 'pool', None)
    if pool is None:
        return shape
    return tuple(pool(torch.empty((1, 1) + shape)).shape[2:])


@torch.no_grad()
def collect_attention(model: nn.Module, inputs, data_samples=None,
                      with_features: bool = False,
                      max_map_elements: int = MAX_MAP_ELEMENTS) -> 'OrderedDict[str, dict]':
    """Attention maps of every mmctx block during one forward pass of ``model``.

    Args:
        model: a segmentor (or any module) containing mmctx blocks.
        inputs: a preprocessed batch ``(N, 3, H, W)``, the ``(inputs, data_samples)``
            pair of :func:`prepare_inputs`, or image paths / arrays (then prepared
            with the model's test pipeline).
        data_samples: passed to ``model(inputs, data_samples, mode='tensor')``.
        with_features: also keep the block's ``input`` ``(N, C, *S)`` and, for blocks
            with a registered term function (:mod:`mmctx.analysis.terms`), ``terms``:
            ``{term: (N, C, *S)}`` contributions before fusion.
        max_map_elements: refuse a block whose ``N·Lq·Lk`` map is larger (the explicit
            path materialises it); feed a smaller image (e.g. via ``cfg_options`` on
            the test pipeline's ``Resize``).

    Returns:
        ``{block name: {term: map, 'shape': (h, w), 'key_shape': (h', w'), ...}}`` in
        module order; maps are fp32 on the CPU, ``pairwise`` ``(N, Lq, Lk)``, ``unary``
        ``(N, 1, Lk)``. ``key_shape`` differs from ``shape`` for ``sub_sample`` blocks.
    """
    blocks = context_blocks(model)
    if not isinstance(inputs, torch.Tensor):
        if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0],
                                                                          torch.Tensor):
            inputs, data_samples = inputs
        else:
            inputs, data_samples = prepare_inputs(model, inputs)
    records: 'OrderedDict[str, dict]' = OrderedDict()

    def make_hook(name):
        def hook(module, args, kwargs, output):
            x = args[0]
            shape = tuple(x.shape[2:])
            key_shape = _key_shape(module, shape)
            # blocks whose maps are not one L×L map (groups, pooled keys, windows, ...)
            # say how many elements their explicit path forms
            count = getattr(module, 'map_elements', None)
            pairwise_size = (count(x) if count is not None
                             else x.shape[0] * math.prod(shape) * math.prod(key_shape))
            if pairwise_size > max_map_elements:
                raise ValueError(
                    f'block {name}: the explicit attention map would have '
                    f'{pairwise_size:,} elements (feature map {shape}); '
                    f'max_map_elements={max_map_elements:,}. Analyse a smaller image, '
                    'e.g. lower the Resize scale of the test pipeline.')
            _, maps = module.forward_with_attention(*args, **kwargs)  # AFNB: 2 inputs
            rec = {term: m.detach().float().cpu() for term, m in maps.items()}
            rec['shape'], rec['key_shape'] = shape, key_shape
            if with_features:
                rec['input'] = x.detach().float().cpu()
                if isinstance(output, torch.Tensor):
                    rec['output'] = output.detach().float().cpu()
                if find_term_function(module) is not None:
                    rec['terms'] = {t: c.detach().float().cpu()
                                    for t, c in term_contributions(module, x).items()}
                stats = block_statistics(module, x)
                if stats:
                    rec['statistics'] = {k: t.detach().float().cpu()
                                         for k, t in stats.items()}
            records[name] = rec
        return hook

    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True)
               for n, m in blocks.items()]
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, 'data_preprocessor') and data_samples is not None:
            model(inputs, data_samples, mode='tensor')
        elif hasattr(model, 'data_preprocessor'):
            model(inputs, mode='tensor')
        else:
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in blocks if n not in records]
    if missing:
        raise RuntimeError(f'these mmctx blocks did not run in the forward pass: {missing}')
    return OrderedDict((n, records[n]) for n in blocks)


def attention_terms(record: dict) -> List[str]:
    """The attention-map entries of a ``collect_attention`` record."""
    return [k for k in record if k not in NON_TERM_KEYS and k != 'terms']


# ---------------------------------------------------------------------- statistics
def effective_map(block: nn.Module, record: dict) -> torch.Tensor:
    """The weights ``A`` ``(N, Lq, Lk)`` with which the block mixes its values:
    ``Σ_j A_ij v_j`` is everything its context modeling aggregates for query ``i``.

    * pairwise + unary, ``value='reduced'`` (``conv_out(Σ_j P_ij v_j + Σ_j u_j v_j)``):
      ``A = P + u``;
    * pairwise + unary, ``value='full'`` (``γ·Σ_j P_ij v_j + Σ_j u_j v_j``):
      ``A = γ·P + u``;
    * one term: that term (a unary map broadcast to every query).
    """
    pairwise, unary = record.get('pairwise'), record.get('unary')
    if pairwise is None:
        return unary
    if unary is None:
        return pairwise
    gamma = getattr(block, 'gamma', None)
    scale = 1. if gamma is None else float(gamma.detach())
    return scale * pairwise + unary


def mean_cosine_distance(rows: torch.Tensor) -> float:
    """GCNet's average distance ``1/K² Σ_i Σ_j (1 − cos(r_i, r_j))`` of the rows ``(K, D)``
    (all ordered pairs, the ``i = j`` terms included, as the paper's ``AvgDist``).

    Identical rows score exactly 0 (detected, not left to rounding); the result is
    clamped to ``[0, 2]``. Rows of zeros count as identical to each other.
    """
    rows = rows.double()
    k = rows.shape[0]
    if k < 2:
        raise ValueError(f'need at least 2 rows to compare, got {k}')
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
    dist = (1 - unit @ unit.T).clamp(0, 2)
    for i in range(k):  # identical rows: exactly 0, not 1 − (1 ± rounding)
        dist[i, (rows == rows[i]).all(-1)] = 0.
    return float(dist.sum() / (k * k))


def mean_js_divergence(rows: torch.Tensor) -> float:
    """Average Jensen–Shannon divergence (base 2, in ``[0, 1]``) ``1/K² Σ_i Σ_j
    JS(p_i, p_j)`` of the rows ``(K, D)``, each normalised to sum 1 (all ordered pairs,
    as :func:`mean_cosine_distance`).

    Returns NaN if a row has a negative entry or sums to 0 (not a distribution: NL's
    ``dot_product`` mode). Identical rows score exactly 0.
    """
    rows = rows.double()
    k = rows.shape[0]
    if k < 2:
        raise ValueError(f'need at least 2 rows to compare, got {k}')
    sums = rows.sum(dim=1, keepdim=True)
    if (rows < 0).any() or (sums <= 0).any():
        return float('nan')
    p = rows / sums
    plogp = torch.special.xlogy(p, p)  # 0·log 0 = 0
    step = max(1, (1 << 24) // (k * p.shape[1]))  # bound the (step, K, D) temporaries
    total = 0.
    for start in range(0, k, step):
        a = p[start:start + step].unsqueeze(1)  # (s, 1, D) against (1, K, D)
        m = (a + p.unsqueeze(0)) / 2
        kl_a = (plogp[start:start + step].unsqueeze(1) - torch.special.xlogy(a, m)).sum(-1)
        kl_b = (plogp.unsqueeze(0) - torch.special.xlogy(p.unsqueeze(0), m)).sum(-1)
        js = ((kl_a + kl_b) / (2 * math.log(2))).clamp(0, 1)  # (s, K), in bits
        js[(a == p.unsqueeze(0)).all(-1)] = 0.
        total += float(js.sum())
    return total / (k * k)


def _valid_positions(shape, inputs_hw, data_sample) -> torch.Tensor:
    """Flat indices of feature positions inside the image (not the batch padding)."""
    h, w = shape[-2:]
    meta = {} if data_sample is None else data_sample.metainfo
    img_h, img_w = meta.get('img_shape', inputs_hw)[:2]
    rows = min(h, math.ceil(img_h * h / inputs_hw[0]))
    cols = min(w, math.ceil(img_w * w / inputs_hw[1]))
    grid = torch.arange(h * w).reshape(h, w)
    lead = math.prod(shape[:-2])  # 3D blocks: every frame
    per_frame = grid[:rows, :cols].flatten()
    return torch.cat([per_frame + f * h * w for f in range(lead)])


def _prepared(model: nn.Module, image):
    """``(inputs, data_samples)`` for one image: a path / array (test pipeline), a
    preprocessed ``(1, 3, H, W)`` tensor, or an ``(inputs, data_samples)`` pair."""
    if isinstance(image, torch.Tensor):
        return image, None
    if isinstance(image, tuple):
        return image
    return prepare_inputs(model, image)


def _block_type(block: nn.Module) -> str:
    name = type(block).__name__
    if getattr(block, 'pooling_type', None) == 'avg':
        name += ' (avg pooling: uniform, not learned)'
    elif getattr(block, 'mode', None) in ('dot_product', 'concatenation'):
        name += f' ({block.mode}: weights not softmax-normalised)'
    return name


def _images_list(images) -> list:
    if isinstance(images, (str, np.ndarray)):
        return [images]
    images = list(images)
    if not images:
        raise ValueError('no images given')
    return images


#: ``residual`` below this: the block is still ≈ its initial identity
NEAR_IDENTITY = 1e-2


def query_independence(model: nn.Module, images, num_queries: int = 64, seed: int = 0,
                       progress: bool = False) -> List[dict]:
    """GCNet's query-independence statistics (§3.2, Table 1), one row per block.

    For each image, ``num_queries`` query positions are drawn at random (seeded) from
    the block's feature map (inside the image, not its padding; all positions if there
    are fewer). With ``A_i`` the attention map of query ``i`` (a row over key
    positions), ``x_i`` the block input and ``o_i`` the block's output *before fusion*
    (``Σ_t c_t(i)``, the terms' contributions, :mod:`mmctx.analysis.terms`; for add
    fusion this is ``out_i − x_i`` up to a bias):

    * ``cosine_distance``: GCNet's ``AvgDist = 1/K² Σ_i Σ_j (1 − cos(A_i, A_j))``,
      with ``A`` the *effective* map the block applies (:func:`effective_map`: for
      DNL ``P + u``, i.e. pairwise plus unary; a unary map is the same row for every
      query, so unary-only / GC / SNL / SE score exactly 0);
    * ``js_divergence``: the same average of the Jensen–Shannon divergence (base 2)
      between the rows
      normalised to sum 1 (NaN where a map is not a distribution);
    * ``pairwise_cosine_distance``, ``pairwise_js_divergence``: the same for the
      pairwise term alone (None without one);
    * ``input_cosine_distance``: mean pairwise cosine distance of the inputs ``x_i``;
    * ``feature_cosine_distance``: the same for the outputs before fusion ``o_i``
      (GCNet's "output" column: ≈0 when every query receives the same context);
    * ``residual``: ``‖out − x‖ / ‖x‖`` over the whole feature map, how much the block
      changes its input; ``near_identity`` is True below ``NEAR_IDENTITY`` (1 %): the
      block still acts as its initial identity (zero-initialised ``conv_out`` or γ
      still ≈ 0, e.g. after a few iterations), so its maps are those of untrained
      projections and say nothing about what training finds.

    ``images``: paths or BGR arrays (run through the test pipeline), or already
    preprocessed ``(1, 3, H, W)`` tensors / ``(inputs, data_samples)`` pairs, one image
    each. Each statistic is averaged over images. Returns a list of dicts with these keys
    plus ``block``, ``type``, ``terms``, ``shape``, ``num_images``, ``num_queries``.
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 2:
        raise ValueError(f'num_queries must be an int >= 2, got {num_queries!r}')
    images = _images_list(images)
    blocks = context_blocks(model)
    gen = torch.Generator().manual_seed(seed)
    sums: Dict[str, Dict[str, List[float]]] = OrderedDict()
    info: Dict[str, dict] = {}
    for index, img in enumerate(images):
        inputs, samples = _prepared(model, img)
        records = collect_attention(model, inputs, samples, with_features=True)
        for name, rec in records.items():
            block = blocks[name]
            valid = _valid_positions(rec['shape'], inputs.shape[-2:],
                                     samples[0] if samples else None)
            if valid.numel() < 2:
                continue
            pick = valid[torch.randperm(valid.numel(), generator=gen)[:num_queries]]
            pick = pick.sort().values
            amap = effective_map(block, rec)
            if amap is None:  # no map over positions (e.g. DANet's channel attention alone)
                continue
            amap = amap[0]  # (Lq or 1, Lk)
            rows = amap[pick] if amap.shape[0] > 1 else amap.expand(len(pick), -1)
            stats = dict(cosine_distance=mean_cosine_distance(rows),
                         js_divergence=mean_js_divergence(rows))
            if 'pairwise' in rec:
                prow = rec['pairwise'][0][pick]
                stats['pairwise_cosine_distance'] = mean_cosine_distance(prow)
                stats['pairwise_js_divergence'] = mean_js_divergence(prow)
            feats = rec['input'][0].flatten(1).T  # (L, C)
            stats['input_cosine_distance'] = mean_cosine_distance(feats[pick])
            if 'terms' in rec:
                out = sum(rec['terms'].values())[0].flatten(1).T
                stats['feature_cosine_distance'] = mean_cosine_distance(out[pick])
            if 'output' in rec and getattr(block, 'residual', True) \
                    and rec['output'].shape == rec['input'].shape:
                # residual blocks only (LESA replaces a conv)
                stats['residual'] = float((rec['output'] - rec['input']).norm()
                                          / rec['input'].norm().clamp_min(1e-12))
            for key, value in stats.items():
                sums.setdefault(name, OrderedDict()).setdefault(key, []).append(value)
            info[name] = dict(block=name, type=_block_type(block),
                              terms=attention_terms(rec), shape=rec['shape'],
                              num_queries=len(pick))
        if progress:
            print(f'[query independence] image {index + 1}/{len(images)}', flush=True)
    rows = []
    for name in blocks:
        if name not in info:
            continue
        row = dict(info[name], num_images=len(sums[name]['cosine_distance']))
        for key in ('cosine_distance', 'js_divergence', 'pairwise_cosine_distance',
                    'pairwise_js_divergence', 'input_cosine_distance',
                    'feature_cosine_distance', 'residual'):
            values = sums[name].get(key)
            row[key] = None if values is None else float(np.mean(values))
        row['near_identity'] = row['residual'] is not None and \
            row['residual'] < NEAR_IDENTITY
        rows.append(row)
    return rows


def term_shares(model: nn.Module, images, progress: bool = False) -> List[dict]:
    """The average share of each context term in a block's output, one row per block
    with several terms (DNL: pairwise vs unary; any block registered in
    :mod:`mmctx.analysis.terms`).

    Definition: with ``c_t(i)`` the contribution of term ``t`` at position ``i`` before
    fusion (:func:`mmctx.analysis.terms.term_contributions`; for DNL with
    ``value='reduced'`` ``c_t = conv_out(y_t) − conv_out(0)``, the linear part of the
    output conv + BN applied to the term), ``M_t = mean over images and positions of
    ‖c_t(i)‖₂`` and ``share_t = M_t / Σ_t' M_t'``. Shares sum to 1.

    LESA (ours; the paper's percentages are not known): the terms are the unary ``U``
    and the gated binary ``g ⊙ B``; for the self-attention-only arm they are the
    query's own position and all other positions (``B_i`` split as ``s·a_ii v_i`` and
    ``s·Σ_{j≠i} a_ij v_j``, :func:`mmctx.analysis.terms.lesa_own_position_split`). Each
    LESA row also gets ``gate`` — statistics of the gate ``g`` over images, valid
    positions and channels: ``mean``, ``std``, ``closed`` (share of entries < 0.1) and
    ``open`` (> 0.9) — and ``own_attention``: the mean head-averaged attention ``a_ii``
    of a query on its own position, beside its chance level ``1/L`` (uniform
    attention), as ``mean`` and ``chance``.

    Returns:
        ``[dict(block, type, terms, shares={term: share}, mean_norms={term: M_t},
        num_images[, gate, own_attention])]`` (empty if no block has several terms).
    """
    images = _images_list(images)
    blocks = context_blocks(model)
    norms: Dict[str, Dict[str, List[float]]] = OrderedDict()
    gates: Dict[str, List[torch.Tensor]] = OrderedDict()
    own: Dict[str, List[Tuple[float, float]]] = OrderedDict()
    for index, img in enumerate(images):
        inputs, samples = _prepared(model, img)
        records = collect_attention(model, inputs, samples, with_features=True)
        sample = samples[0] if samples else None
        for name, rec in records.items():
            terms = rec.get('terms', {})
            if len(terms) < 2:
                continue
            for term, c in terms.items():  # c's own grid (a strided block pools)
                valid = _valid_positions(tuple(c.shape[2:]), inputs.shape[-2:], sample)
                per_position = c[0].flatten(1).norm(dim=0)[valid]  # (L, )
                norms.setdefault(name, OrderedDict()).setdefault(term, []).append(
                    float(per_position.double().mean()))
            stats = rec.get('statistics', {})
            valid = _valid_positions(rec['shape'], inputs.shape[-2:], sample)
            if 'gate' in stats:
                gates.setdefault(name, []).append(stats['gate'][0].flatten(1)[:, valid])
            if 'own_attention' in stats:
                own.setdefault(name, []).append(
                    (float(stats['own_attention'][0][valid].double().mean()),
                     1. / stats['own_attention'].shape[-1]))
        if progress:
            print(f'[term shares] image {index + 1}/{len(images)}', flush=True)
    rows = []
    for name, per_term in norms.items():
        means = OrderedDict((t, float(np.mean(v))) for t, v in per_term.items())
        total = sum(means.values())
        shares = OrderedDict((t, m / total if total > 0 else float('nan'))
                             for t, m in means.items())
        row = dict(block=name, type=_block_type(blocks[name]), terms=list(means),
                   shares=shares, mean_norms=means,
                   num_images=len(next(iter(per_term.values()))))
        if name in gates:
            g = torch.cat([t.flatten() for t in gates[name]]).double()
            row['gate'] = dict(mean=float(g.mean()), std=float(g.std(unbiased=False)),
                               closed=float((g < 0.1).double().mean()),
                               open=float((g > 0.9).double().mean()))
        if name in own:
            row['own_attention'] = dict(mean=float(np.mean([m for m, _ in own[name]])),
                                        chance=float(np.mean([c for _, c in own[name]])))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return '–'
    if isinstance(value, float) and math.isnan(value):
        return 'n/a'
    if value == 0:
        return '0'
    if abs(value) < 10**-digits:
        return f'{value:.1e}'
    return f'{value:.{digits}f}'


def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def write_query_independence(rows: List[dict], out_dir: str,
                             title: str = '') -> Tuple[str, str]:
    """``out_dir/query_independence.md`` (one table row per block) and ``.png``."""
    os.makedirs(out_dir, exist_ok=True)
    md, png = osp.join(out_dir, 'query_independence.md'), osp.join(
        out_dir, 'query_independence.png')
    lines = [f'# Query independence{": " + title if title else ""}', '',
             "GCNet's analysis (§3.2, Table 1). Over K random query positions of each "
             'image, averaged over all K² ordered pairs (GCNet\'s AvgDist) and over '
             'images: **att cos** = cosine distance (1 − cos) between the attention '
             'maps of different queries (for DNL the effective map pairwise + unary; '
             'γ·pairwise + unary with a γ-gated pairwise term); **att JS** = mean '
             'Jensen–Shannon divergence (base 2) between them; **pairwise** = the same '
             'for the pairwise term alone; **input** / **output** = mean cosine distance '
             "between the block's input features / its output before fusion at "
             'different positions. A query-independent block (unary-only, GC, SNL, SE) '
             'scores exactly 0 on att and output. n/a: the map is not a distribution '
             '(NL dot product); –: the block has no such term.', '',
             '**residual** = ‖block output − input‖ / ‖input‖.', '',
             '| block | type | feature map | att cos | att JS | pairwise cos | '
             'pairwise JS | input cos | output cos | residual | K | images |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(
            f'| {r["block"]} | {r["type"]} | {"×".join(map(str, r["shape"]))} | '
            f'{_fmt(r["cosine_distance"])} | {_fmt(r["js_divergence"])} | '
            f'{_fmt(r["pairwise_cosine_distance"])} | {_fmt(r["pairwise_js_divergence"])} | '
            f'{_fmt(r["input_cosine_distance"])} | {_fmt(r["feature_cosine_distance"])} | '
            f'{_fmt(r.get("residual"))}{" ⚠" if r.get("near_identity") else ""} | '
            f'{r["num_queries"]} | {r["num_images"]} |')
    untrained = [r['block'] for r in rows if r.get('near_identity')]
    if untrained:
        lines += ['', f'⚠ **Still ≈ identity** ({", ".join(untrained)}): the block changes '
                  f'its input by less than {NEAR_IDENTITY:.0%} (its zero-initialised output '
                  'projection or γ is still ≈ 0, as after a few iterations), so these maps '
                  'are those of untrained projections: do not read query independence '
                  '(or its absence) from them as a finding.']
    with open(md, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plt = _plt()
    keys = [('cosine_distance', 'att cos'), ('js_divergence', 'att JS'),
            ('input_cosine_distance', 'input cos'),
            ('feature_cosine_distance', 'output cos')]
    # horizontal bars, one group per block: the labels get the figure's whole left
    # side (side by side under vertical bars they overlap once there are many blocks)
    fig, ax = plt.subplots(figsize=(11, 0.9 * len(rows) + 1.4))
    height = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        values = [r[key] if r[key] is not None and not math.isnan(r[key]) else 0.
                  for r in rows]
        ax.barh(np.arange(len(rows)) + i * height, values, height, label=label)
    ax.set_yticks(np.arange(len(rows)) + 0.4 - height / 2)
    ax.set_yticklabels([f'{r["block"]}  ({r["type"].split(" ")[0]})' for r in rows],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel('distance (0 = query-independent)')
    ax.set_title(title or 'query independence', fontsize=9)
    ax.grid(axis='x', alpha=0.3)
    ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md, png


def write_term_shares(rows: List[dict], out_dir: str, title: str = '') -> Tuple[str, str]:
    """``out_dir/term_shares.md`` (one table row per block) and ``.png``."""
    os.makedirs(out_dir, exist_ok=True)
    md, png = osp.join(out_dir, 'term_shares.md'), osp.join(out_dir, 'term_shares.png')
    terms = []
    for r in rows:
        terms += [t for t in r['terms'] if t not in terms]
    lines = [f'# Term shares{": " + title if title else ""}', '',
             "share of term t = M_t / Σ M, where M_t is the mean over images and "
             "positions of ‖c_t‖₂, the norm of the term's contribution to the block "
             'output before fusion (DNL: the output conv + norm applied to the term, '
             'without its bias; γ-gated blocks: γ·pairwise).', '']
    if not rows:
        lines.append('No block of this model has several context terms.')
    else:
        lines += ['| block | type | ' + ' | '.join(f'{t} share' for t in terms)
                  + ' | ' + ' | '.join(f'{t} mean ‖c‖' for t in terms) + ' | images |',
                  '|---|---|' + '---|' * (2 * len(terms)) + '---|']
        for r in rows:
            lines.append(f'| {r["block"]} | {r["type"]} | '
                         + ' | '.join(_fmt(r['shares'].get(t)) for t in terms) + ' | '
                         + ' | '.join(_fmt(r['mean_norms'].get(t)) for t in terms)
                         + f' | {r["num_images"]} |')
    gated = [r for r in rows if 'gate' in r or 'own_attention' in r]
    if gated:
        lines += ['', '## LESA gates and own-position attention (ours)', '',
                  'gate g of the binary term (out = U + g ⊙ B) over images, positions and '
                  'channels: mean, std, closed = share of entries < 0.1, open = share > '
                  '0.9. own attention = mean head-averaged attention a_ii of a query on '
                  'its own position; chance = 1/L (uniform attention). Definitions are '
                  "mmctx's; the paper's numbers are not known.", '',
                  '| block | gate mean | gate std | closed (<0.1) | open (>0.9) | '
                  'own attention | chance (1/L) |', '|---|---|---|---|---|---|---|']
        for r in gated:
            g, o = r.get('gate', {}), r.get('own_attention', {})
            lines.append(f'| {r["block"]} | ' + ' | '.join(
                _fmt(g.get(k)) for k in ('mean', 'std', 'closed', 'open')) + ' | '
                + ' | '.join(_fmt(o.get(k)) for k in ('mean', 'chance')) + ' |')
    with open(md, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3))
    bottom = np.zeros(len(rows))
    for t in terms:
        values = np.array([r['shares'].get(t, 0.) for r in rows])
        ax.bar([r['block'] for r in rows], values, bottom=bottom, label=t)
        bottom += values
    ax.set_ylim(0, 1)
    ax.set_ylabel('share of the block output')
    ax.set_title(title or 'term shares', fontsize=9)
    if rows:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, 'no block with several terms', ha='center',
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md, png


def _load_rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, str):
        from PIL import Image
        return np.asarray(Image.open(image).convert('RGB'))
    return image[..., ::-1]  # BGR (mmcv) → RGB


def attention_maps(model: nn.Module, image: ImageLike,
                   queries: Sequence[Tuple[int, int]], out_dir: str,
                   title: str = '') -> Tuple[str, str]:
    """The attention of every 2D mmctx block at ``queries`` ``[(y, x), ...]`` (pixels of
    the original image), as in the DNL paper's figure.

    Writes ``out_dir/attention_maps.png`` — one row per block; columns: the image with
    the queries marked, then the pairwise map of each query (if the block has one),
    then the unary map (query-independent: one panel) — and ``attention_maps.md``
    (the query → feature-position mapping and where each map peaks). Maps are shown
    over the image region (batch padding cropped). Returns both paths.
    """
    if isinstance(image, str) and not osp.isfile(image):
        raise FileNotFoundError(f'no such image file: {image}')
    rgb = _load_rgb(image)
    height, width = rgb.shape[:2]
    queries = [tuple(int(v) for v in q) for q in queries]
    if not queries:
        raise ValueError('give at least one query point (y, x)')
    for y, x in queries:
        if not (0 <= y < height and 0 <= x < width):
            raise ValueError(f'query (y={y}, x={x}) is outside the {height}×{width} '
                             f'image (y in [0, {height - 1}], x in [0, {width - 1}])')
    inputs, samples = prepare_inputs(model, image)
    records = collect_attention(model, inputs, samples)
    blocks = context_blocks(model)
    in_h, in_w = inputs.shape[-2:]
    img_h, img_w = samples[0].metainfo.get('img_shape', (in_h, in_w))[:2]
    sy, sx = img_h / height, img_w / width

    def to_grid(y, x, shape):  # original pixel → cell of a (h, w) grid over the input
        h, w = shape
        return (min(h - 1, int((y + 0.5) * sy * h / in_h)),
                min(w - 1, int((x + 0.5) * sx * w / in_w)))

    def crop(m, shape):  # (h, w) map → the part over the image, and its extent
        h, w = shape
        return m[:math.ceil(img_h * h / in_h), :math.ceil(img_w * w / in_w)]

    rows2d = [(n, r) for n, r in records.items() if len(r['shape']) == 2]
    skipped = [n for n, r in records.items() if len(r['shape']) != 2]
    if not rows2d:
        raise ValueError(f'no 2D mmctx block to draw (1D/3D blocks: {skipped})')
    ncols = 1 + max(len(queries) * ('pairwise' in r) + ('unary' in r) for _, r in rows2d)
    plt = _plt()
    fig, axes = plt.subplots(len(rows2d), ncols, figsize=(2.4 * ncols, 2.4 * len(rows2d)),
                             squeeze=False)
    colors = plt.cm.tab10.colors
    lines = [f'# Attention maps{": " + title if title else ""}', '',
             f'Image {height}×{width} (network input {img_h}×{img_w}, padded to '
             f'{in_h}×{in_w}); queries (y, x) in image pixels. Pairwise maps: one per '
             'query (rows of the (Lq, Lk) map); unary maps: one per block, the same for '
             'every query. Peak: the key position with the largest weight, as the '
             'centre of its cell in image pixels.', '',
             '| block | type | term | query (y, x) | feature position | peak weight | '
             'peak at (y, x) |', '|---|---|---|---|---|---|---|']
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    for row, (name, rec) in enumerate(rows2d):
        ax = axes[row][0]
        ax.imshow(rgb, extent=extent)
        for i, (y, x) in enumerate(queries):
            ax.plot(x, y, 'o', color=colors[i % 10], markeredgecolor='white', markersize=7)
        ax.set_ylabel(f'{name}\n{type(blocks[name]).__name__}', fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        panels = []
        kh, kw = rec['key_shape']
        if 'pairwise' in rec:
            for i, q in enumerate(queries):
                fy, fx = to_grid(*q, rec['shape'])
                flat = fy * rec['shape'][1] + fx
                panels.append(('pairwise', i, q, (fy, fx),
                               rec['pairwise'][0, flat].reshape(kh, kw)))
        if 'unary' in rec:
            panels.append(('unary', None, None, None, rec['unary'][0, 0].reshape(kh, kw)))
        for col in range(1, ncols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col - 1 >= len(panels):
                ax.axis('off')
                continue
            term, i, q, cell, m = panels[col - 1]
            shown = crop(m, (kh, kw)).numpy()
            ax.imshow(rgb.mean(-1), cmap='gray', extent=extent)
            ax.imshow(shown, cmap='jet', alpha=0.6, extent=extent, interpolation='nearest')
            if q is not None:
                ax.plot(q[1], q[0], 'o', color=colors[i % 10], markeredgecolor='white',
                        markersize=7)
            ax.set_title(term if q is None else f'{term} @ ({q[0]}, {q[1]})', fontsize=8)
            py, px = np.unravel_index(int(np.argmax(shown)), shown.shape)
            peak = ((py + 0.5) * in_h / kh / sy, (px + 0.5) * in_w / kw / sx)
            lines.append(
                f'| {name} | {_block_type(blocks[name])} | {term} | '
                f'{"all (query-independent)" if q is None else q} | '
                f'{"–" if cell is None else cell} | {shown.max():.4g} | '
                f'({peak[0]:.0f}, {peak[1]:.0f}) |')
    if skipped:
        lines += ['', f'Not drawn (not 2D): {", ".join(skipped)}']
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    md, png = osp.join(out_dir, 'attention_maps.md'), osp.join(out_dir, 'attention_maps.png')
    fig.savefig(png, dpi=100)
    plt.close(fig)
    with open(md, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return md, png


# ------------------------------------------------------------------- CLI helpers
def resolve_images(model: nn.Module, pattern: Optional[str] = None,
                   split: Optional[str] = None, num_images: Optional[int] = None) -> List[str]:
    """Image paths from a glob pattern, or from the config's ``{split}_dataloader``."""
    if (pattern is None) == (split is None):
        raise ValueError('give exactly one of an image glob or a dataset split')
    if pattern is not None:
        paths = sorted(p for p in glob_module.glob(pattern, recursive=True) if osp.isfile(p))
        if not paths:
            raise FileNotFoundError(f'no image file matches {pattern!r}')
    else:
        from mmengine.registry import init_default_scope
        from mmseg.registry import DATASETS
        key = f'{split}_dataloader'
        if key not in model.cfg:
            raise ValueError(f'the config has no {key} (splits: '
                             f'{[k[:-11] for k in model.cfg if k.endswith("_dataloader")]})')
        init_default_scope(model.cfg.get('default_scope', 'mmseg'))
        cfg = dict(model.cfg[key].dataset)
        cfg['lazy_init'] = True
        dataset = DATASETS.build(cfg)
        dataset.full_init()
        paths = [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]
        if not paths:
            raise FileNotFoundError(f'the {split} split of the config is empty')
    return paths[:num_images] if num_images else paths
