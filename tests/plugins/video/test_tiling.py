"""STA 3D token tiling: the permutation, tiled block masks, installed tiled plans, plan JSON."""
import pytest
import torch

from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.patterns import Pattern, block_mask, density
from sparsity_plugins.video.plan import AttentionPlan
from sparsity_plugins.video.tiling import from_tiled, tile_inverse, tile_permutation, to_tiled

from .test_patterns import pool


def test_permutation_is_a_bijection_of_contiguous_boxes():
    layout = TokenLayout(4, 4, 6, text=3, text_first=True)
    perm = tile_permutation(layout, (2, 2, 3))
    assert sorted(perm.tolist()) == list(range(layout.total))
    assert torch.equal(perm[:3], torch.arange(3))  # text in place
    assert torch.equal(perm[tile_inverse(layout, (2, 2, 3))], torch.arange(layout.total))
    _, t, y, x = layout.coords(perm[3:])
    for i in range(0, layout.video, 12):  # every 12 consecutive tiled tokens: one 2×2×3 box, frame-major inside
        box = [(int(a), int(b), int(c)) for a, b, c in zip(t[i:i + 12], y[i:i + 12], x[i:i + 12])]
        t0, y0, x0 = box[0]
        assert t0 % 2 == 0 and y0 % 2 == 0 and x0 % 3 == 0
        assert box == [(t0 + a, y0 + b, x0 + c) for a in range(2) for b in range(2) for c in range(3)]
    # the tiles themselves come frame-major over the tile grid
    firsts = [(int(t[i]), int(y[i]), int(x[i])) for i in range(0, layout.video, 12)]
    assert firsts == [(a, b, c) for a in (0, 2) for b in (0, 2) for c in (0, 3)]


def test_partial_tiles_at_non_dividing_edges_and_text_after():
    layout = TokenLayout(3, 5, 5, text=4)
    perm = tile_permutation(layout, (2, 4, 4))
    assert sorted(perm.tolist()) == list(range(layout.total))
    assert torch.equal(perm[-4:], torch.arange(layout.video, layout.total))
    _, t, y, x = layout.coords(perm[:layout.video])
    # first tile: the full 2×4×4 box; the next one the 2×4×1 partial box beside it
    assert set(zip(t[:32].tolist(), y[:32].tolist(), x[:32].tolist())) == {
        (a, b, c) for a in range(2) for b in range(4) for c in range(4)}
    assert set(zip(t[32:40].tolist(), y[32:40].tolist(), x[32:40].tolist())) == {
        (a, b, 4) for a in range(2) for b in range(4)}


SPECS = ["diagonal(h=1,w=1)", "diagonal(t=1,h=0,w=2)", "multidiagonal(h=1,w=1)", "stripe(n=7)",
         "diagonal(h=1,w=1)+stripe", "multidiagonal+diagonal(h=0,w=1)+stripe(f=2)", "dense"]
LAYOUTS = [(TokenLayout(4, 4, 4), (2, 2, 2)), (TokenLayout(3, 5, 6, text=5, text_first=True), (2, 2, 4)),
           (TokenLayout(2, 6, 5, text=3), (1, 4, 4)), (TokenLayout(5, 3, 3), (5, 3, 3))]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("layout,tile", LAYOUTS)
@pytest.mark.parametrize("bs", [1, 4, 8, 16])
def test_tiled_block_mask_equals_permuted_token_mask_pooled(spec, layout, tile, bs):
    perm = tile_permutation(layout, tile)
    tok = Pattern.parse(spec).allowed(layout, perm, perm)  # token mask in tiled order
    pos = torch.arange(layout.total)
    assert torch.equal(tok, Pattern.parse(spec).allowed(layout, pos, pos)[perm][:, perm])
    assert torch.equal(block_mask(spec, layout, bs, tile=tile), pool(tok, bs))


def test_tiling_makes_3d_windows_block_sparse():
    layout, bs, tile = TokenLayout(4, 16, 16), 128, (4, 2, 16)  # a 128-token block: a 2-row strip of all 4 frames

    def d(spec, tile=None):
        return density(block_mask(spec, layout, bs, tile=tile), layout.total, bs)
    # frame-major, a block is half a frame: the same neighbourhood in every frame is every block,
    # a ±1 frame window 40 of the 64 blocks; tiled, a block reaches the tiles of the rows within ±1
    # (2 of 8 tiles at the top and bottom, 3 inside): (2·2 + 6·3) / 64
    assert d("multidiagonal(h=1,w=1)") == 1.0 and d("multidiagonal(h=2,w=2)") == 1.0
    assert d("diagonal(t=1,h=1,w=1)") == 40 / 64
    for spec in ("multidiagonal(h=1,w=1)", "multidiagonal(h=2,w=2)", "diagonal(t=1,h=1,w=1)"):
        assert d(spec, tile) == 22 / 64
    assert d("diagonal(t=2,h=4,w=4)", tile) == 34 / 64 < 0.875 == d("diagonal(t=2,h=4,w=4)")
    # the tile shape matters: a 2×4×4 tile (32 tokens) at 32-token blocks is worse than
    # frame-major strips for a window crossing every tile border (a 2×4×4 tile reaches its 3×3×2
    # neighbours), better for the same neighbourhood across frames
    small = dict(tile=(2, 4, 4))
    assert density(block_mask("diagonal(t=1,h=3,w=3)", layout, 32, **small), 1024, 32) == 400 / 1024 \
        > density(block_mask("diagonal(t=1,h=3,w=3)", layout, 32), 1024, 32) == 340 / 1024
    assert density(block_mask("multidiagonal", layout, 32, tile=(4, 2, 4)), 1024, 32) == 32 / 1024 \
        < density(block_mask("multidiagonal", layout, 32), 1024, 32) == 128 / 1024


def test_permutation_round_trip_and_gradients():
    layout = TokenLayout(2, 3, 5, text=2)
    x = torch.randn(1, 2, layout.total, 4, requires_grad=True)
    y = to_tiled(x, layout, (2, 2, 2))
    assert torch.equal(from_tiled(y, layout, (2, 2, 2)), x)
    y.pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * x)


@pytest.mark.parametrize("tile", [(0, 2, 2), (2, 2), [1, 2, 3, 4], (2.0, 2, 2), (True, 2, 2), "2x2x2", (-1, 1, 1)])
def test_bad_tiles_raise(tile):
    layout = TokenLayout(2, 4, 4)
    with pytest.raises(ValueError, match="tile"):
        block_mask("diagonal", layout, 4, tile=tile)
    with pytest.raises(ValueError, match="tile"):
        AttentionPlan.uniform("WanTransformer3DModel", layout, 1, 2, "diagonal", block_size=4, tile=tile)
    with pytest.raises(ValueError, match="tile"):
        tile_permutation(layout, tile)


def test_plan_json_round_trip_keeps_the_tile(tmp_path):
    layout = TokenLayout(4, 8, 8, text=4)
    plan = AttentionPlan("HunyuanVideoTransformer3DModel", layout, [["dense", "diagonal(t=1,h=1,w=1)"]] * 2,
                         block_size=32, tile=[2, 4, 4])
    assert plan.tile == (2, 4, 4)
    plan.save(tmp_path / "plan.json")
    back = AttentionPlan.load(tmp_path / "plan.json")
    assert back == plan and back.tile == (2, 4, 4) and back.densities() == plan.densities()
    untiled = AttentionPlan("HunyuanVideoTransformer3DModel", layout, plan.patterns, block_size=32)
    assert back.densities()[0][1] == density(block_mask(plan.patterns[0][1], layout, 32, tile=(2, 4, 4)), 260, 32) \
        != untiled.densities()[0][1]
    data = untiled.to_dict()
    assert "tile" not in data  # old plans (no tile key) load untiled
    assert AttentionPlan.from_dict(data).tile is None
    data["tile"] = [0, 1, 1]
    with pytest.raises(ValueError, match="tile"):
        AttentionPlan.from_dict(data)


@pytest.mark.parametrize("kind,tile", [("wan", (2, 2, 2)), ("hunyuan", (3, 2, 4)), ("mochi", (1, 4, 2))])
def test_tiled_plan_equals_masked_reference_in_original_order(kind, tile):
    import torch.nn.functional as F

    from sparsity_plugins.video.kernel import token_mask
    from sparsity_plugins.video.processors import install

    from .helpers import model_and_inputs, run
    model, x = model_and_inputs(kind)
    with install(model, block_size=1) as s:
        run(model, x)
        layout = s.layout
    specs = ["diagonal(h=1,w=1)+stripe(n=4)", "multidiagonal(h=0,w=1)"]
    plan = AttentionPlan(type(model).__name__, layout, [specs, specs[::-1]], block_size=8, tile=tile)
    with install(model, plan) as s:
        out = run(model, x)
        assert s.calls["sparse"] == 2
    inv = tile_inverse(layout, tile)
    masks = [[token_mask(block_mask(p, layout, 8, tile=tile), layout.total, 8)[inv][:, inv] for p in row]
             for row in plan.patterns]  # token masks permuted back to the original order

    def reference(layer, q, k, v, scale):
        return torch.cat([F.scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1],
                                                         attn_mask=masks[layer][h], scale=scale)
                          for h in range(q.shape[1])], 1)
    with install(model, block_size=8) as s:
        s.observer = reference
        ref = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(out, run(model, x), atol=1e-4)  # the plan did change the output
    assert any(not torch.equal(block_mask(p, layout, 8, tile=tile), block_mask(p, layout, 8)) for p in specs)


def test_tiled_costs_measured_and_by_density():
    from sparsity_plugins.video.cost import measure_costs
    layout, tile = TokenLayout(4, 8, 8), (2, 4, 4)
    by_density = measure_costs(["stripe", "diagonal(t=1,h=1,w=1)"], layout, 32, head_dim=8, measure=False, tile=tile)
    assert by_density("diagonal(t=1,h=1,w=1)") == density(
        block_mask("diagonal(t=1,h=1,w=1)", layout, 32, tile=tile), 256, 32)
    measured = measure_costs(["stripe"], layout, 32, head_dim=8, repeats=1, tile=tile)
    assert measured.measured and measured.relative["stripe"] > 0 and measured.dense_seconds > 0
