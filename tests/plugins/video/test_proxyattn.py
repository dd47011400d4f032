"""ProxyAttn: proxy-head block ranking with a budget per head. γ = 1 is dense; a dominant key
block is kept by every head; peaky and flat heads get different budgets; in a model the output
is the masked dense reference of the masks it chose."""
import pytest
import torch
import torch.nn.functional as F

from sparsity_plugins.video.dynamic import mask_density, safe_mask
from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.processors import install
from sparsity_plugins.video.proxyattn import (ProxyAttn, head_budgets, probe_positions, proxy_groups,
                                              proxy_importance, proxyattn_mask)

from .helpers import model_and_inputs, run

LAYOUT = TokenLayout(1, 5, 8)  # 40 video tokens, no text: 5 blocks of 8


def dominant_qkv(heads=3, s=40, d=8, block=2, flat_heads=(), seed=0):
    """Every query aligned with the keys of key block ``block``; ``flat_heads`` get zero queries."""
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(d, generator=g), dim=0)
    q = (5.0 * u).expand(1, heads, s, d) + 0.05 * torch.randn(1, heads, s, d, generator=g)
    k = 0.1 * torch.randn(1, heads, s, d, generator=g)
    k[:, :, block * 8:(block + 1) * 8] += 5.0 * u
    for h in flat_heads:
        q[:, h] = 0.0
    return q, k, torch.randn(1, heads, s, d, generator=g)


def test_gamma_one_keeps_every_block_and_equals_dense():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8) for _ in range(3))
    method = ProxyAttn(gamma=1.0)
    out = method.attend(0, q, k, v, None, TokenLayout(1, 1, 37), 8)
    assert bool(method.last_budgets.eq(5).all())
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    assert method.stats == {"calls": 1, "density": 1.0}


@pytest.mark.parametrize("proxy_heads", [1, 3])
def test_a_dominant_key_block_is_kept_by_every_head_and_nothing_else(proxy_heads):
    q, k, _ = dominant_qkv()
    mask, budgets = proxyattn_mask(q, k, 8, proxy_heads=proxy_heads, probe=4, gamma=0.9)
    assert bool(mask[..., 2].all())
    assert bool(budgets.eq(1).all()) and bool(mask.sum(-1).eq(1).all())


def test_importance_is_token_level_mass_per_key_block():
    q, k, _ = dominant_qkv()
    imp = proxy_importance(q, k, 8, proxy_heads=1, probe=3, sampling="strided")
    assert imp.shape == (1, 1, 5, 5)
    assert torch.allclose(imp.sum(-1), torch.ones(1, 1, 5))  # probabilities of every key, averaged
    assert bool((imp[..., 2] > 0.99).all())


def test_peaky_and_flat_heads_get_different_budgets_with_the_shared_ranking():
    q, k, _ = dominant_qkv(heads=2, flat_heads=(1,))
    budgets = head_budgets(q, k, 8, gamma=0.9)
    assert budgets[0, 0].tolist() == [1] * 5  # peaky: one block holds the mass
    assert budgets[0, 1].tolist() == [5] * 5  # flat: 5 equal blocks, 0.9 needs all five
    mask, _ = proxyattn_mask(q, k, 8, proxy_heads=1, gamma=0.75)
    assert mask[0, 0].sum(-1).tolist() == [1] * 5 and mask[0, 1].sum(-1).tolist() == [4] * 5
    assert bool(mask[0, :, :, 2].all())  # both heads rank by the proxy: block 2 first
    bounded = head_budgets(q, k, 8, gamma=0.9, min_blocks=3, max_density=0.4)
    assert bounded[0, 0].tolist() == [3] * 5 and bounded[0, 1].tolist() == [3] * 5
    assert head_budgets(q, k, 8, gamma=0.9, max_density=0.4)[0, 1].tolist() == [2] * 5


def test_proxy_groups_and_probe_positions():
    assert proxy_groups(6, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert proxy_groups(3, 8).tolist() == [0, 1, 2]  # at most one group per head
    pos, blk = probe_positions(10, 4, 3, "last")
    assert pos.tolist() == [1, 2, 3, 5, 6, 7, 8, 9] and blk.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    pos, blk = probe_positions(10, 4, 2, "strided")
    assert pos.tolist() == [0, 3, 4, 7, 8, 9] and blk.tolist() == [0, 0, 1, 1, 2, 2]


def test_density_of_the_safe_masks_is_recorded():
    q, k, v = dominant_qkv(flat_heads=(1,))
    method = ProxyAttn(gamma=0.75)
    method.attend(0, q, k, v, None, LAYOUT, 8)
    mask, _ = proxyattn_mask(q, k, 8, gamma=0.75)
    expected = mask_density(safe_mask(mask, LAYOUT, 8), 40, 8)
    assert method.stats["calls"] == 1 and method.stats["density"] == pytest.approx(expected)
    assert 0.2 < expected < 1.0


class Recording(ProxyAttn):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.masks = []

    def select(self, layer, q, k, v, scale, layout, block_size):
        m = super().select(layer, q, k, v, scale, layout, block_size)
        self.masks.append(safe_mask(m, layout, block_size))
        return m


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_in_the_model_the_output_is_the_masked_reference_of_its_masks(kind):
    model, x = model_and_inputs(kind)
    method = Recording(gamma=0.5, probe=4)
    with install(model, block_size=8, method=method):
        out = run(model, x)
    assert method.stats["calls"] == 2 and 0 < method.stats["density"] < 1
    masks = iter(method.masks)

    def reference(layer, q, k, v, scale):
        m = next(masks)
        return torch.stack([torch.cat([masked_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h:h + 1],
                                                        v[b:b + 1, h:h + 1], m[b, h], 8, scale)
                                       for h in range(q.shape[1])], 1)[0] for b in range(q.shape[0])])
    with install(model, block_size=8) as s:
        s.observer = reference
        ref = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, run(model, x), atol=1e-5)  # the masks changed the output


@pytest.mark.parametrize("kwargs, name", [
    ({"proxy_heads": 0}, "proxy_heads"), ({"probe": 0}, "probe"), ({"probe": 2.5}, "probe"),
    ({"sampling": "random"}, "sampling"), ({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"),
    ({"min_blocks": 0}, "min_blocks"), ({"max_density": 0.0}, "max_density"),
    ({"max_density": True}, "max_density"), ({"dense_steps": -1}, "dense_steps"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ProxyAttn(**kwargs)


def test_bad_block_size():
    q, k, _ = dominant_qkv()
    with pytest.raises(ValueError, match="block_size"):
        proxyattn_mask(q, k, 0)
