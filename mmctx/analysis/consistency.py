"""DNL's consistency statistics: does the pairwise term attend within the query's own
category, and the unary term to boundaries?

The DNL paper (Yin et al., ECCV 2020) states that "the whitened pairwise term learns
within-region relationships while the unary term learns salient boundaries"; its own
protocol and numbers could not be found (REFERENCE-2 §B.1a, [NF]), so this is **mmctx's
protocol**, labelled as such wherever it is printed:

* ground truth: the label map, resized (nearest) with the image to the network input,
  then nearest-downsampled to the block's feature grid; positions labelled ``ignore_index``
  (255) and the batch padding are dropped — as queries and as keys;
* within-category mask of query ``i``: ``W_i(j) = 1[y_j = y_i]``;
* boundary mask: ``B_r(j) = 1`` if a valid position within Chebyshev radius ``r`` has
  another valid label (``r`` swept, default 1, 2, 3: the paper's width is [NF]);
* for a map ``A_i`` (a softmax over keys, renormalised over the valid keys) and a mask
  ``M_i``: the **mass** ``Σ_j A_i(j) M_i(j)`` beside its **chance** level
  ``|M_i| / #valid`` (what a uniform map would put there), and the **Pearson
  correlation** between ``A_i`` and ``M_i`` over the valid keys; averaged over sampled
  valid queries, then over images. Cross terms (pairwise ↔ boundary, unary ↔ within)
  are reported too;
* plain NL has no unary term: its logits are split by the paper's identity
  ``s·qᵢᵀkⱼ = s·(qᵢ−μ_q)ᵀ(kⱼ−μ_k) + s·μ_qᵀkⱼ + (terms constant in j)`` (``s`` NL's
  scale), and the softmax over ``j`` of each part is reported as NL's "whitened
  pairwise" and "unary" parts.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: boundary radii swept by default (Chebyshev, in feature cells)
RADII = (1, 2, 3)
IGNORE_INDEX = 255


# -------------------------------------------------------------------- masks
def labels_to_grid(labels: torch.Tensor, grid: Tuple[int, int],
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Nearest-downsample an ``(H, W)`` label map to a ``(h, w)`` feature grid
    (``F.interpolate(mode='nearest')``: cell ``(a, b)`` takes the label at
    ``(⌊a·H/h⌋, ⌊b·W/w⌋)``)."""
    if labels.dim() != 2:
        raise ValueError(f'labels must be an (H, W) map, got shape {tuple(labels.shape)}')
    out = F.interpolate(labels[None, None].float(), size=tuple(grid), mode='nearest')
    return out[0, 0].round().long()


def boundary_mask(labels: torch.Tensor, radius: int,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``B(j) = 1`` where a valid position within Chebyshev ``radius`` of ``j`` has a
    valid label other than ``j``'s (``j`` itself valid); ``(h, w)`` bool."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f'radius must be an int >= 1, got {radius!r}')
    h, w = labels.shape
    valid = labels != ignore_index
    padded = F.pad(labels, (radius, radius, radius, radius), value=ignore_index)
    out = torch.zeros(h, w, dtype=torch.bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            other = padded[dy:dy + h, dx:dx + w]
            out |= (other != ignore_index) & (other != labels)
    return out & valid


# --------------------------------------------------------------- statistics
def _rows_stats(maps: torch.Tensor, masks: torch.Tensor) -> Tuple[float, float, float]:
    """Mean over rows of (mass in mask, chance, Pearson r); ``maps`` renormalised.

    ``maps`` ``(Q, K)`` non-negative over the valid keys, ``masks`` ``(Q, K)`` bool
    (or ``(1, K)``, broadcast). Rows whose mask is empty or full have no defined
    correlation: they count for mass and chance, not for r.
    """
    maps = maps.double()
    maps = maps / maps.sum(dim=1, keepdim=True).clamp_min(1e-30)
    masks = masks.expand_as(maps).double()
    mass = (maps * masks).sum(1)
    chance = masks.mean(1)
    a = maps - maps.mean(1, keepdim=True)
    m = masks - masks.mean(1, keepdim=True)
    denom = (a.square().sum(1) * m.square().sum(1)).sqrt()
    ok = denom > 0
    r = (a * m).sum(1)[ok] / denom[ok]
    return mass.mean().item(), chance.mean().item(), (r.mean().item() if ok.any()
                                                      else float('nan'))


def consistency_statistics(labels: torch.Tensor, pairwise: Optional[torch.Tensor] = None,
                           unary: Optional[torch.Tensor] = None,
                           radii: Sequence[int] = RADII, num_queries: int = 1024,
                           seed: int = 0, ignore_index: int = IGNORE_INDEX
                           ) -> Dict[str, float]:
    """The statistics of one image.

    Args:
        labels: ``(h, w)`` labels on the block's grid (:func:`labels_to_grid`).
        pairwise: ``(L, L)`` query × key softmax map (``L = h·w``), or None.
        unary: ``(L, )`` (or ``(1, L)``) softmax over keys, or None.
        radii: boundary radii.
        num_queries: valid queries sampled (seeded) for the pairwise statistics; all
            of them when there are fewer.

    Returns:
        ``{'<map>_<mask>_{mass,chance,r}': value}`` for map ∈ {pairwise, unary} and
        mask ∈ {within, boundary_r<r>}, plus ``num_queries`` and ``num_keys``.
    """
    h, w = labels.shape
    keep = (labels != ignore_index).flatten()  # the batch padding is ignore_index too
    keys = keep.nonzero().flatten()
    if len(keys) < 2:
        raise ValueError(f'fewer than 2 labelled positions on the {h}x{w} grid: nothing '
                         'to measure')
    flat = labels.flatten()[keys]  # (K, )
    boundaries = {r: boundary_mask(labels, r, ignore_index).flatten()[keys] for r in radii}
    gen = torch.Generator().manual_seed(seed)
    pick = keys[torch.randperm(len(keys), generator=gen)[:num_queries]] \
        if len(keys) > num_queries else keys
    within = flat[None, :] == labels.flatten()[pick][:, None]  # (Q, K)
    out: Dict[str, float] = dict(num_queries=float(len(pick)), num_keys=float(len(keys)))
    for name, m in (('pairwise', pairwise), ('unary', unary)):
        if m is None:
            continue
        m = m.detach().float().cpu()
        if name == 'pairwise':
            if m.shape != (h * w, h * w):
                raise ValueError(f'pairwise map must be ({h * w}, {h * w}) for the {h}x{w} '
                                 f'grid, got {tuple(m.shape)}')
            rows = m[pick][:, keys]
        else:
            m = m.reshape(-1)
            if m.numel() != h * w:
                raise ValueError(f'unary map must have {h * w} entries for the {h}x{w} grid, '
                                 f'got {m.numel()}')
            rows = m[keys][None]
        masks = {'within': within}
        masks.update({f'boundary_r{r}': b[None] for r, b in boundaries.items()})
        for mask_name, mask in masks.items():
            # the unary map is one row for every query: against each query's own
            # within-category mask it is repeated
            mass, chance, r = _rows_stats(
                rows.expand(len(pick), -1) if rows.shape[0] < mask.shape[0] else rows,
                mask)
            out[f'{name}_{mask_name}_mass'] = mass
            out[f'{name}_{mask_name}_chance'] = chance
            out[f'{name}_{mask_name}_r'] = r
    return out


def nl_split(block: torch.nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Plain NL's logits split by the DNL paper's identity (module docstring):
    ``{'pairwise': softmax_j(s·(qᵢ−μ_q)ᵀ(kⱼ−μ_k)) (N, Lq, Lk), 'unary':
    softmax_j(s·μ_qᵀkⱼ) (N, 1, Lk)}`` for an embedded-Gaussian / Gaussian NL block
    without whitening and unary term."""
    if getattr(block, 'whiten', None) != 'none' or getattr(block, 'unary', None) != 'none' \
            or getattr(block, 'mode', None) not in ('embedded_gaussian', 'gaussian'):
        raise ValueError('the NL split applies to a plain NL block (whiten none, no unary, '
                         f'embedded_gaussian or gaussian mode), got {type(block).__name__}')
    with torch.no_grad():
        q, k, _ = block.project(x)
        q, k = q.double(), k.double()
        scale = 1. / block.temperature
        if block.mode == 'embedded_gaussian' and block.use_scale:
            scale *= q.shape[-1]**-0.5
        q_mean, k_mean = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
        pair = torch.bmm(q - q_mean, (k - k_mean).transpose(1, 2)).mul(scale).softmax(-1)
        unary = torch.bmm(q_mean, k.transpose(1, 2)).mul(scale).softmax(-1)
    return dict(pairwise=pair.float(), unary=unary.float())


# ------------------------------------------------------------------ models
def block_maps(block: torch.nn.Module, record: dict) -> Dict[str, torch.Tensor]:
    """The maps of one ``collect_attention`` record that the statistics read: DNL's
    ``pairwise`` / ``unary``, or plain NL's two parts (needs ``with_features``)."""
    if 'pairwise' in record and 'unary' not in record and 'input' in record:
        try:
            return nl_split(block, record['input'])
        except ValueError:
            pass
    return {k: record[k] for k in ('pairwise', 'unary') if k in record}


def consistency(model: torch.nn.Module, images: Sequence[str], labels: Sequence[str],
                radii: Sequence[int] = RADII, num_queries: int = 1024, seed: int = 0,
                ignore_index: int = IGNORE_INDEX, progress: bool = False) -> List[dict]:
    """The statistics of every block with a pairwise and/or unary term over image files
    and their label maps (one row per block, averaged over the images).

    Label maps are read as mmseg does (``LoadAnnotations``: the PNG's values, e.g.
    Cityscapes' ``*_labelTrainIds.png``, ADE20K's reduced labels after
    ``reduce_zero_label`` when the config asks for it), resized with the image (nearest)
    to the network input, padded with ``ignore_index`` where the input is padded, and
    downsampled to each block's grid.
    """
    from .attention import _prepared, collect_attention, context_blocks
    if len(images) != len(labels):
        raise ValueError(f'got {len(images)} images and {len(labels)} label maps')
    if not images:
        raise ValueError('no images given')
    blocks = context_blocks(model)
    reduce_zero = _reduce_zero_label(model)
    sums: Dict[str, Dict[str, List[float]]] = {}
    kinds: Dict[str, str] = {}
    for index, (image, label_path) in enumerate(zip(images, labels)):
        inputs, samples = _prepared(model, image)
        records = collect_attention(model, (inputs, samples), with_features=True)
        gt = _label_on_input(label_path, samples[0].metainfo, tuple(inputs.shape[-2:]),
                             reduce_zero, ignore_index)
        for name, rec in records.items():
            maps = block_maps(blocks[name], rec)
            if not maps or len(rec['shape']) != 2:
                continue
            kinds[name] = ('NL split (whitened part + μ_q part)'
                           if 'unary' in maps and 'unary' not in rec else
                           '+'.join(k for k in ('pairwise', 'unary') if k in maps))
            grid = labels_to_grid(gt, rec['shape'], ignore_index)
            stats = consistency_statistics(
                grid, maps['pairwise'][0] if 'pairwise' in maps else None,
                maps['unary'][0] if 'unary' in maps else None, radii, num_queries,
                seed + index, ignore_index)
            for k, v in stats.items():
                sums.setdefault(name, {}).setdefault(k, []).append(v)
        if progress:
            print(f'[consistency] image {index + 1}/{len(images)}', flush=True)
    rows = []
    for name in blocks:
        if name not in sums:
            continue
        row = dict(block=name, type=type(blocks[name]).__name__, maps=kinds[name],
                   num_images=len(sums[name]['num_keys']))
        for k, values in sums[name].items():
            finite = [v for v in values if not math.isnan(v)]
            row[k] = sum(finite) / len(finite) if finite else float('nan')
        rows.append(row)
    if not rows:
        raise ValueError('no block with a pairwise or unary term over a 2-D map: the '
                         'consistency statistics need DNL / NL-style blocks, got '
                         f'{[type(b).__name__ for b in blocks.values()]}')
    return rows


def _reduce_zero_label(model) -> bool:
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        return False
    steps = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    return any(s.get('type') == 'LoadAnnotations' and s.get('reduce_zero_label')
               for s in steps) or bool(cfg.test_dataloader.dataset.get('reduce_zero_label'))


def _label_on_input(path: str, meta: dict, input_hw: Tuple[int, int], reduce_zero: bool,
                    ignore_index: int) -> torch.Tensor:
    """The label map at the network input's size (resized as the image, padded)."""
    import mmcv
    label = mmcv.imread(path, flag='unchanged', backend='pillow')
    if label is None:
        raise FileNotFoundError(f'cannot read the label map {path}')
    label = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if label.dim() == 3:
        label = label[..., 0]
    if reduce_zero:
        label = torch.where(label == 0, ignore_index, label - 1)
        label[label == ignore_index - 1] = ignore_index
    img_h, img_w = meta.get('img_shape', input_hw)[:2]
    label = F.interpolate(label[None, None].float(), size=(img_h, img_w),
                          mode='nearest')[0, 0].long()
    out = torch.full(input_hw, ignore_index, dtype=torch.long)
    h, w = min(img_h, input_hw[0]), min(img_w, input_hw[1])
    out[:h, :w] = label[:h, :w]
    return out


# -------------------------------------------------------------------- files
def labelled_split(model, split: str, num_images: Optional[int] = None
                   ) -> Tuple[List[str], List[str]]:
    """Image and label-map paths of the config's ``{split}_dataloader``."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    key = f'{split}_dataloader'
    if key not in model.cfg:
        raise ValueError(f'the config has no {key}')
    init_default_scope(model.cfg.get('default_scope', 'mmseg'))
    cfg = dict(model.cfg[key].dataset)
    cfg['lazy_init'] = True
    dataset = DATASETS.build(cfg)
    dataset.full_init()
    infos = [dataset.get_data_info(i) for i in range(len(dataset))][:num_images or None]
    if not infos:
        raise FileNotFoundError(f'the {split} split of the config is empty')
    missing = [i['img_path'] for i in infos if not i.get('seg_map_path')]
    if missing:
        raise ValueError(f'the {split} split has images without label maps, e.g. {missing[0]}')
    return [i['img_path'] for i in infos], [i['seg_map_path'] for i in infos]


def _fmt(v: float) -> str:
    return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}'


def write_consistency(rows: List[dict], out_dir: str, title: str = '',
                      radii: Sequence[int] = RADII) -> Tuple[str, str]:
    """``consistency.md`` (one row per block and map) and ``consistency.png``."""
    import os
    os.makedirs(out_dir, exist_ok=True)
    masks = ['within'] + [f'boundary_r{r}' for r in radii]
    head = ' | '.join(f'{m} mass (chance) | {m} r' for m in masks)
    lines = [f'# Consistency statistics{": " + title if title else ""}', '',
             "mmctx's protocol (the DNL paper's own could not be found): attention mass of "
             "each map on the query's own category (**within**) and on ground-truth "
             'boundaries (**boundary_r<r>**: a different valid label within Chebyshev '
             'radius r, in feature cells), beside the chance level of a uniform map, and '
             'the Pearson correlation r between map and mask; ignored pixels dropped, '
             'queries sampled, averaged over images. NL split: the softmax of each part '
             "of NL's logits, s·(q−μ_q)ᵀ(k−μ_k) (pairwise) and s·μ_qᵀk (unary).", '',
             f'| block | type | maps | term | {head} | images |',
             '|' + '---|' * (5 + 2 * len(masks)) ]
    for row in rows:
        for term in ('pairwise', 'unary'):
            if f'{term}_within_mass' not in row:
                continue
            cells = []
            for m in masks:
                cells += [f"{_fmt(row[f'{term}_{m}_mass'])} ({_fmt(row[f'{term}_{m}_chance'])})",
                          _fmt(row[f'{term}_{m}_r'])]
            lines.append(f"| {row['block']} | {row['type']} | {row['maps']} | {term} | "
                         + ' | '.join(cells) + f" | {row['num_images']} |")
    md = os.path.join(out_dir, 'consistency.md')
    with open(md, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    png = os.path.join(out_dir, 'consistency.png')
    _plot(rows, png, masks)
    return md, png


def _plot(rows: List[dict], path: str, masks: List[str]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    bars = [(f"{r['block']} ({t})", r, t) for r in rows for t in ('pairwise', 'unary')
            if f'{t}_within_mass' in r]
    fig, axes = plt.subplots(1, len(masks), figsize=(4 * len(masks), 0.5 * len(bars) + 1.6),
                             sharey=True, squeeze=False)
    y = np.arange(len(bars))
    for ax, m in zip(axes[0], masks):
        mass = [r[f'{t}_{m}_mass'] for _, r, t in bars]
        chance = [r[f'{t}_{m}_chance'] for _, r, t in bars]
        ax.barh(y, mass, height=0.6, label='attention mass')
        ax.scatter(chance, y, color='k', marker='|', s=300, label='chance', zorder=3)
        ax.set_title(m)
        ax.set_xlim(0, 1)
        ax.grid(axis='x', alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([b[0] for b in bars])
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
