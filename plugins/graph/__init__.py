"""Graph plugin (PyTorch Geometric): edge sparsification and graph sparsity methods.

``torch_geometric`` is imported only when a function needs it
(``pip install 'sparsity-suite[graph]'``). TEDDY degree-based edge sparsification
(:mod:`.teddy`), graph lottery tickets (:mod:`.ugs`, the :class:`UGS` program), spectral
quality (:mod:`.spectral`), the dyGRASS dynamic spectral sparsifier (:mod:`.dygrass`), GTSP
graph-transformer sparsification on ``GPSConv`` (:mod:`.gtsp`, the :class:`GTSP` program) with
attention run in buckets of similarly sized graphs (:mod:`.attention_buckets`),
neighbour-sampled mini-batches for large graphs with or without pyg-lib (:mod:`.sampling`),
reference models (a GCN whose first layer can take sparse CSR features,
:mod:`.sparse_features`) and offline data loaders.
"""
from __future__ import annotations

from importlib import import_module

from .._lazy import lazy_getattr

_EXPORTS = {"teddy_edge_scores": "teddy", "teddy_mask": "teddy", "TEDDY": "teddy", "check_edge_index": "teddy",
            "distillation_loss": "teddy", "relative_condition_number": "spectral", "laplacian": "spectral",
            "EdgeMask": "ugs", "WeightMask": "ugs", "rate_for": "ugs", "UGS": "ugs_program",
            "GCN": "models", "GIN": "models", "GraphGPS": "models", "NodeClassifier": "node_module", "GraphClassifier": "graph_module", "sparse_input_dropout": "models",
            "csr_linear": "sparse_features", "SparseInputLinear": "sparse_features",
            "planetoid": "datasets", "tudataset": "datasets", "karate_club": "datasets", "sbm_graph": "datasets",
            "grid_graph": "datasets", "node_datamodule": "datasets",
            "DynamicSparsifier": "dygrass", "grass_sparsifier": "dygrass",
            "GTSP": "gtsp_program", "GTSPController": "gtsp", "find_gps_layers": "gtsp", "GTSPConfig": "gtsp_config",
            "GTSPPlan": "gtsp_plan", "count_flops": "gtsp_flops", "attention_flops": "gtsp_flops",
            "FlopsReport": "gtsp_flops", "LayerCost": "gtsp_flops", "PrunedAttention": "gtsp_attention",
            "GTSPLayer": "gtsp_gates", "HeadGate": "gtsp_gates", "PrunedGPSLayer": "gtsp_gates",
            "SkipLayer": "gtsp_gates", "topk_per_graph": "gtsp_tokens", "induced_subgraph": "gtsp_tokens",
            "neighbor_loader": "sampling", "UniformNeighborSampler": "sampling", "sampler_backend": "sampling",
            "BucketedAttention": "attention_buckets", "bucket_attention": "attention_buckets",
            "size_buckets": "attention_buckets"}

__all__ = sorted(_EXPORTS) + ["register"]


def register() -> None:
    """Entry point of the ``sparsity_suite.plugins`` group: registers the ``ugs`` and ``gtsp``
    programs (torch_geometric is imported when they attach)."""
    import_module(f"{__name__}.ugs_program")
    import_module(f"{__name__}.gtsp_program")


__getattr__ = lazy_getattr(__name__, _EXPORTS)
