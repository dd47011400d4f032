"""Block masks of every pattern against a brute-force token-level mask."""
import math

import pytest
import torch

from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.patterns import Pattern, block_mask, density


def brute_tokens(spec_parts, layout):
    """Token mask by Python loops over (t, y, x), written independently of the library."""
    s = layout.total

    def where(i):
        v = i - (layout.text if layout.text_first else 0)
        if v < 0 or v >= layout.video:
            return None
        t, r = divmod(v, layout.height * layout.width)
        return t, r // layout.width, r % layout.width, v

    out = torch.zeros(s, s, dtype=torch.bool)
    for i in range(s):
        for j in range(s):
            a, b = where(i), where(j)
            if a is None or b is None:
                out[i, j] = True
                continue
            for kind, p in spec_parts:
                if kind == "dense":
                    ok = True
                elif kind == "diagonal":
                    ok = abs(a[0] - b[0]) <= p.get("t", 0) and abs(a[1] - b[1]) <= p.get("h", 99) \
                        and abs(a[2] - b[2]) <= p.get("w", 99)
                elif kind == "multidiagonal":
                    ok = abs(a[1] - b[1]) <= p.get("h", 0) and abs(a[2] - b[2]) <= p.get("w", 0)
                else:
                    ok = b[3] < p.get("n", p.get("f", 1) * layout.height * layout.width)
                if ok:
                    out[i, j] = True
                    break
    return out


def pool(tok, bs):
    s = tok.shape[0]
    nb = math.ceil(s / bs)
    padded = torch.nn.functional.pad(tok, (0, nb * bs - s, 0, nb * bs - s))
    return padded.view(nb, bs, nb, bs).any(3).any(1)


CASES = [
    ("dense", [("dense", {})]),
    ("diagonal", [("diagonal", {})]),
    ("diagonal(h=1,w=1)", [("diagonal", {"h": 1, "w": 1})]),
    ("diagonal(t=1,h=0,w=2)", [("diagonal", {"t": 1, "h": 0, "w": 2})]),
    ("multidiagonal", [("multidiagonal", {})]),
    ("multidiagonal(h=1,w=0)", [("multidiagonal", {"h": 1})]),
    ("stripe", [("stripe", {})]),
    ("stripe(n=5)", [("stripe", {"n": 5})]),
    ("diagonal(h=1,w=1)+stripe(n=7)", [("diagonal", {"h": 1, "w": 1}), ("stripe", {"n": 7})]),
    ("multidiagonal+diagonal(h=0,w=1)+stripe(f=2)",
     [("multidiagonal", {}), ("diagonal", {"h": 0, "w": 1}), ("stripe", {"f": 2})]),
]
LAYOUTS = [TokenLayout(3, 4, 5), TokenLayout(4, 3, 3, text=5, text_first=True), TokenLayout(2, 5, 4, text=3)]


@pytest.mark.parametrize("spec,parts", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bs", [1, 4, 7, 16])
def test_block_mask_matches_brute_force(spec, parts, layout, bs):
    tok = brute_tokens(parts, layout)
    assert torch.equal(block_mask(spec, layout, bs), pool(tok, bs))


def test_token_level_equals_brute_force():
    layout = LAYOUTS[1]
    for spec, parts in CASES:
        pos = torch.arange(layout.total)
        assert torch.equal(Pattern.parse(spec).allowed(layout, pos, pos), brute_tokens(parts, layout)), spec


def test_spec_round_trip_and_union_order():
    p = Pattern.parse("stripe + diagonal(h=2,w=2)")
    assert str(p) == "diagonal(h=2,w=2)+stripe"
    assert Pattern.parse(str(p)) == p == Pattern.parse("diagonal(w=2,h=2)+stripe(f=1)")


@pytest.mark.parametrize("spec,match", [
    ("banded", "unknown attention pattern 'banded'.*valid"),
    ("diagonal(r=2)", "takes integer parameters"),
    ("diagonal(h=-1)", "takes integer parameters"),
    ("diagonal(h=1.5)", "takes integer parameters"),
    ("", "non-empty"),
    ("__import__('os')", "unknown attention pattern"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        Pattern.parse(spec)


def test_block_size_larger_than_sequence():
    with pytest.raises(ValueError, match="larger than the sequence"):
        block_mask("dense", TokenLayout(1, 2, 2), 5)
    with pytest.raises(ValueError, match="block_size"):
        block_mask("dense", TokenLayout(1, 2, 2), 0)


def test_density_counts_the_short_tail():
    layout = TokenLayout(1, 1, 10)
    m = block_mask("dense", layout, 4)
    assert m.shape == (3, 3) and density(m, 10, 4) == 1.0
    m[2, 2] = False
    assert density(m, 10, 4) == pytest.approx(1 - 4 / 100)


def test_large_layout_is_quick():
    layout = TokenLayout(16, 32, 32)  # 16384 tokens
    m = block_mask("diagonal(h=4,w=4)+stripe", layout, 128)
    assert m.shape == (128, 128) and 0 < density(m, layout.total, 128) < 0.5
