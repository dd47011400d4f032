"""Which modules get an adapter: regular expressions matched in full against qualified names.

``re.fullmatch(pattern, name)`` on the name in ``model.named_modules()``, so ``"proj"`` is not
a suffix rule: it matches a module named exactly ``proj`` and never ``patch_embed.proj`` (a
``Conv2d`` in timm ViTs, the trap of peft's suffix matching); write
``r"blocks\\.\\d+\\.attn\\.proj"`` or ``r".*attn\\.proj"``. Every pattern must match at least
one module and every matched module must be an adaptable ``nn.Linear``, else ``ValueError``
before anything changes.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple, Union

from torch import nn

Patterns = Union[str, Sequence[str]]


def compile_patterns(patterns: Patterns, what: str) -> List[re.Pattern]:
    """Regular expressions from one string or a sequence of strings (at least one)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{what} must be a regular expression or a list of them, got {patterns!r}")
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") from None
    return out


def adaptable(module: nn.Module) -> Tuple[bool, str]:
    """``(True, "")`` for an ``nn.Linear`` whose forward is ``nn.Linear``'s, else ``(False, why)``."""
    if not isinstance(module, nn.Linear):
        return False, f"a {type(module).__name__}, not an nn.Linear"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return False, "the out_proj of an nn.MultiheadAttention, which reads its weight without calling it"
    if type(module).forward is not nn.Linear.forward:
        return False, f"a {type(module).__name__} with its own forward"
    return True, ""


def match_modules(model: nn.Module, patterns: Patterns, what: str = "target_modules") -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every module whose qualified name one of ``patterns`` matches in
    full; a pattern matching nothing raises ``ValueError`` (naming the modules it occurs in)."""
    compiled = compile_patterns(patterns, what)
    named = [(n, m) for n, m in model.named_modules() if n]
    matched = [(n, m) for n, m in named if any(p.fullmatch(n) for p in compiled)]
    for p in compiled:
        if not any(p.fullmatch(n) for n, _ in named):
            inside = [n for n, _ in named if p.search(n)][:8]
            hint = (f"; it occurs inside {inside} (write a pattern for the whole name, e.g. {'.*' + p.pattern!r})"
                    if inside else "")
            raise ValueError(f"{what} pattern {p.pattern!r} matches no module name in full{hint}")
    return matched


def match_linear(model: nn.Module, patterns: Patterns, what: str = "target_modules") -> List[Tuple[str, nn.Linear]]:
    """Like :func:`match_modules`, and every match must be adaptable (:func:`adaptable`)."""
    matched = match_modules(model, patterns, what)
    bad = [f"{n!r} ({adaptable(m)[1]})" for n, m in matched if not adaptable(m)[0]]
    if bad:
        raise ValueError(f"{what} match modules that cannot take an adapter: {', '.join(bad[:8])}"
                         f"{' ...' if len(bad) > 8 else ''}; adapters wrap nn.Linear layers only: narrow the pattern")
    return matched
