"""Find the weights of a model that a sparsity method should act on.

Defaults follow common practice (Zhu & Gupta 2017; Gale et al. 2019): prune the weights
(tensors with two or more dimensions) of leaf modules and of ``nn.MultiheadAttention``;
skip 1-D parameters (biases, norm scales), normalization layers, embeddings, parameters
held directly by container modules (ViT position embeddings, class tokens) and the
classifier head. ``include`` / ``exclude`` are regular expressions searched
(``re.search``) in module names; an ``include`` pattern that matches no candidate module is
an error.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, List, Sequence, Set, Union

from torch import nn
from torch.nn.utils import parametrize

from .layouts import UnitLayout, parse_layout
from .macs import count_macs
from .targets import Target

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)

Patterns = Union[None, str, Sequence[str]]


def as_patterns(patterns: Patterns, what: str) -> List[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    try:
        patterns = list(patterns)
    except TypeError:
        patterns = [patterns]
    bad = [p for p in patterns if not isinstance(p, (str, re.Pattern))]
    if bad:
        raise TypeError(f"{what} must be a regular expression string or a list of them, got {bad[0]!r}")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") from None
    return compiled


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or type(module).__name__.lower().endswith(("norm", "norm2d", "rmsnorm"))


def classifier_heads(model: nn.Module) -> Set[str]:
    """Names of classifier-head modules.

    Uses ``get_classifier()`` where a (sub)module has it (timm models), otherwise the last
    ``nn.Linear`` registered in the model.
    """
    heads: Set[str] = set()
    modules = dict(model.named_modules())
    by_id = {id(m): n for n, m in modules.items()}
    for name, module in modules.items():
        get = getattr(module, "get_classifier", None)
        if callable(get):
            try:
                head = get()
            except Exception:  # noqa: BLE001 - a model's own accessor failing is not our error
                continue
            if isinstance(head, nn.Module) and id(head) in by_id:
                heads.add(by_id[id(head)])
                heads.update(n for n, _ in head.named_modules(prefix=by_id[id(head)]))
    if not heads:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if linears:
            heads.add(linears[-1])
    return heads


def candidate_weights(model: nn.Module, skip_head: bool = True) -> List[tuple]:
    """``(module_name, param_name, fqn, param)`` for every weight the defaults allow.

    A module with ``torch.nn.utils.parametrize`` parametrizations counts as a leaf, and a
    parametrized weight is targeted through its stored tensor (``<module>.parametrizations.
    <name>.original``): the mask acts on what the optimizer trains, under the parametrization
    (a head gate, a learnable mask).
    """
    heads = classifier_heads(model) if skip_head else set()
    out = []
    for mod_name, module in model.named_modules():
        parametrized = parametrize.is_parametrized(module)
        is_leaf = all(name == "parametrizations" for name, _ in module.named_children()) if parametrized \
            else next(module.children(), None) is None
        if not (is_leaf or isinstance(module, nn.MultiheadAttention)):
            continue
        if _is_norm(module) or isinstance(module, _EMBEDDINGS) or mod_name in heads:
            continue
        params = list(module.named_parameters(recurse=False))
        if parametrized:
            params += [(f"parametrizations.{name}.original", plist.original)
                       for name, plist in module.parametrizations.items() if hasattr(plist, "original")]
        for p_name, param in params:
            if param.dim() < 2 or not param.requires_grad:
                continue
            fqn = f"{mod_name}.{p_name}" if mod_name else p_name
            out.append((mod_name, p_name, fqn, param))
    return out


def discover_targets(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    layout: Union[str, UnitLayout] = "element",
    skip_head: bool = True,
    example_input: Any = None,
) -> List[Target]:
    """Targets for the weights of ``model`` selected by the defaults and the patterns.

    Args:
        include: regex(es) a module name must match (any of them); ``None`` = all candidates.
        exclude: regex(es) that remove matching modules.
        layout: unit layout for every target (``"element"``, ``"2:4"``, ``"channel"``, ...).
        skip_head: leave the classifier head dense (the default).
        example_input: if given, one forward pass records MACs per unit (batch-normalized).

    Raises:
        ValueError: an include pattern matches no candidate module, nothing is selected, or
            the layout does not fit a selected weight (e.g. N:M on a dimension not
            divisible by M). Nothing in the model is changed.
    """
    layout = parse_layout(layout)
    inc, exc = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    candidates = candidate_weights(model, skip_head=skip_head)
    for pattern in inc:
        if not any(pattern.search(c[0]) for c in candidates):
            names = sorted({c[0] for c in candidates})
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ValueError(f"include pattern {pattern.pattern!r} matches no prunable module. Candidates: {shown}")
    selected = [
        c for c in candidates
        if (not inc or any(p.search(c[0]) for p in inc)) and not any(p.search(c[0]) for p in exc)
    ]
    if not selected:
        raise ValueError("no prunable weights selected: check include/exclude patterns")
    targets = [Target(name=fqn, layout=layout, param=param, module_name=mod) for mod, _, fqn, param in selected]
    if example_input is not None:
        attach_macs(model, targets, example_input)
    return targets


def attach_macs(model: nn.Module, targets: Iterable[Target], example_input: Any) -> None:
    """Set ``macs_per_unit`` of weight targets from one forward pass (the core's
    :func:`~sparsity_core.macs.count_macs`): a Linear/Conv weight entry costs one MAC per
    output position per sample, so a unit costs ``module MACs · params_per_unit / numel``.
    Modules of other types are left at 0 (unknown)."""
    targets = [t for t in targets if t.param is not None]
    wanted = {t.module_name for t in targets}
    names = {id(m): n for n, m in model.named_modules() if n in wanted}
    macs = count_macs(model, example_input, select=lambda m: id(m) in names)
    for t in targets:
        t.macs_per_unit = macs.get(t.module_name, 0.0) * float(t.params_per_unit) / t.param.numel()
