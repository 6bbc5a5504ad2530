"""Analysis helpers behind tools/analysis/."""
from .attention import (attention_maps, collect_attention, context_blocks, effective_map,
                        load_segmentor, mean_cosine_distance, mean_js_divergence,
                        prepare_inputs, query_independence, resolve_images, term_shares,
                        write_query_independence, write_term_shares)
from .consistency import (boundary_mask, consistency, consistency_statistics,
                          labelled_split, labels_to_grid, nl_split, write_consistency)
from .complexity import (ATTENTION_OPS, complexity_report, count_complexity,
                         count_model_complexity, model_inputs, model_task)
from .terms import (TERM_CONTRIBUTIONS, register_term_contributions,
                    term_contributions)

__all__ = [
    'ATTENTION_OPS', 'complexity_report', 'count_complexity', 'count_model_complexity',
    'model_inputs', 'model_task', 'load_segmentor',
    'prepare_inputs', 'context_blocks', 'collect_attention', 'effective_map',
    'mean_cosine_distance', 'mean_js_divergence', 'query_independence',
    'write_query_independence', 'term_shares', 'write_term_shares', 'attention_maps',
    'resolve_images', 'TERM_CONTRIBUTIONS', 'register_term_contributions',
    'term_contributions', 'consistency', 'consistency_statistics', 'boundary_mask',
    'labels_to_grid', 'nl_split', 'labelled_split', 'write_consistency'
]
