"""Hash-grid pruning: Instant-NGP encoding, saliency gate, ADMM, entry removal, callback."""
import itertools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sparsity_core.schedules import Linear
from sparsity_plugins.splat.hashgrid import HashEncoding, SaliencyGrid, pack_bits, popcount32
from sparsity_plugins.splat.hashgrid_admm import SaliencyADMM, project_budget
from sparsity_core import Host, SparsityCallback
from sparsity_plugins.splat.hashgrid_pruning import HashGridPruning, SaliencyUsage

PRIMES = (1, 2654435761, 805459861)


def all_vertices(n: int, dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(n + 1), repeat=dim)))


# -- the encoding -----------------------------------------------------------------------
def test_resolutions_follow_the_geometric_growth_and_dense_levels_fit_the_table():
    enc = HashEncoding(dim=3, levels=8, log2_table_size=12, base_resolution=4, max_resolution=64)
    b = math.exp((math.log(64) - math.log(4)) / 7)
    assert enc.resolutions == [math.floor(4 * b ** lv + 1e-6) for lv in range(8)]
    assert enc.resolutions[0] == 4 and enc.resolutions[-1] == 64
    for n, hashed, size in zip(enc.resolutions, enc.hashed, enc.sizes):
        assert hashed == ((n + 1) ** 3 > 4096)
        assert size == (4096 if hashed else (n + 1) ** 3)
    assert enc.hashed[:3] == [False, False, False] and enc.hashed[-1]


@pytest.mark.parametrize("dim", [2, 3])
def test_coarse_levels_are_collision_free(dim):
    enc = HashEncoding(dim=dim, levels=6, log2_table_size=10, base_resolution=3, max_resolution=40)
    dense = [lv for lv in range(enc.levels) if not enc.hashed[lv]]
    assert dense and len(dense) < enc.levels
    for lv in dense:
        idx = enc.index(lv, all_vertices(enc.resolutions[lv], dim))
        assert sorted(idx.tolist()) == list(range(enc.sizes[lv]))  # a bijection onto the level's table


def test_fine_levels_use_the_spatial_hash_with_uint32_products():
    enc = HashEncoding(dim=3, levels=4, log2_table_size=8, base_resolution=8, max_resolution=300)
    lv = enc.levels - 1
    assert enc.hashed[lv]
    c = torch.tensor([[0, 0, 0], [1, 2, 3], [299, 5, 300], [17, 300, 256]])
    expected = [((x * PRIMES[0]) ^ ((y * PRIMES[1]) % 2 ** 32) ^ ((z * PRIMES[2]) % 2 ** 32)) % 256
                for x, y, z in c.tolist()]
    assert enc.index(lv, c).tolist() == expected


def test_a_table_size_given_directly_need_not_be_a_power_of_two():
    enc = HashEncoding(dim=3, levels=3, log2_table_size=19, table_size=1000, base_resolution=8, max_resolution=40)
    assert enc.table_size == 1000 and enc.sizes == [729, 1000, 1000] and enc.hashed == [False, True, True]
    c = torch.tensor([[1, 2, 3], [40, 17, 39]])
    expected = [((x * PRIMES[0]) ^ ((y * PRIMES[1]) % 2 ** 32) ^ ((z * PRIMES[2]) % 2 ** 32)) % 1000
                for x, y, z in c.tolist()]
    assert enc.index(2, c).tolist() == expected
    assert enc(torch.rand(50, 3)).shape == (50, enc.output_dim)
    with pytest.raises(ValueError, match="table_size"):
        HashEncoding(table_size=0)


def test_interpolation_is_exact_at_vertices_and_linear_between():
    torch.manual_seed(0)
    enc = HashEncoding(dim=2, levels=1, log2_table_size=10, features=3, base_resolution=8, max_resolution=8)
    with torch.no_grad():
        enc.tables[0].normal_()
    table = enc.tables[0].detach()
    at = lambda i, j: table[int(enc.index(0, torch.tensor([i, j])))]  # noqa: E731
    x = torch.tensor([[3 / 8, 5 / 8], [(3 + 0.25) / 8, 5 / 8], [(3 + 0.5) / 8, (5 + 0.5) / 8]])
    out = enc(x).detach()
    assert torch.allclose(out[0], at(3, 5), atol=1e-6)
    assert torch.allclose(out[1], 0.75 * at(3, 5) + 0.25 * at(4, 5), atol=1e-6)
    assert torch.allclose(out[2], 0.25 * (at(3, 5) + at(4, 5) + at(3, 6) + at(4, 6)), atol=1e-6)


def test_gate_multiplies_the_features_by_sigmoid_of_the_grid_sampled_bilinearly():
    torch.manual_seed(0)
    enc = HashEncoding(dim=2, levels=3, log2_table_size=8, base_resolution=4, max_resolution=16, saliency_resolution=3)
    with torch.no_grad():
        enc.saliency.logits.copy_(torch.tensor([[0.0, 1.0, -2.0], [3.0, -1.0, 0.5], [2.0, 0.0, -3.0]]))
    x = torch.rand(50, 2)
    ungated = HashEncoding(dim=2, levels=3, log2_table_size=8, base_resolution=4, max_resolution=16)
    ungated.tables = enc.tables
    s = torch.sigmoid(enc.saliency.logits.detach())
    assert torch.allclose(enc.saliency(torch.tensor([[0.5, 1.0]])), s[1, 2].view(1))  # G[i, j] at (i, j)/(R−1)
    assert torch.allclose(enc.saliency(torch.tensor([[0.25, 0.0]])), (0.5 * (s[0, 0] + s[1, 0])).view(1))
    assert torch.allclose(enc(x), ungated(x) * enc.saliency(x).unsqueeze(-1), atol=1e-6)
    assert enc(torch.rand(4, 5, 2)).shape == (4, 5, enc.output_dim)


def test_bad_configuration_and_input_raise_value_errors():
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        HashEncoding(dim=4)
    with pytest.raises(ValueError, match="max_resolution"):
        HashEncoding(base_resolution=32, max_resolution=16)
    with pytest.raises(ValueError, match="levels must be an int"):
        HashEncoding(levels=0)
    with pytest.raises(ValueError, match="saliency resolution"):
        SaliencyGrid(2, 1)
    with pytest.raises(ValueError, match="last dimension 3"):
        HashEncoding(dim=3, levels=2, log2_table_size=8)(torch.rand(4, 2))


# -- removal ----------------------------------------------------------------------------
def test_bit_packing_and_popcount():
    mask = torch.rand(100, generator=torch.Generator().manual_seed(1)) < 0.4
    words, rank = pack_bits(mask)
    assert words.dtype == torch.int32 and words.numel() == 4
    for k in range(4):
        word = int(words[k]) & 0xFFFFFFFF
        assert [bool(word >> j & 1) for j in range(32) if 32 * k + j < 100] == mask[32 * k: 32 * k + 32].tolist()
        assert int(rank[k]) == int(mask[: 32 * k].sum())
    v = torch.tensor([0, 1, 0xFFFFFFFF, 0x80000001, 123456789])
    assert popcount32(v).tolist() == [bin(int(x)).count("1") for x in v]


def _masked_encoding(dim=3, keep=0.35, seed=0):
    torch.manual_seed(seed)
    enc = HashEncoding(dim=dim, levels=5, log2_table_size=9, features=2, base_resolution=2, max_resolution=24,
                       saliency_resolution=4)
    masks = [torch.rand(n) < keep for n in enc.sizes]
    masks[0] = torch.ones(enc.sizes[0], dtype=torch.bool)  # a level kept whole stays dense
    masks[1][:] = False  # a level removed entirely
    with torch.no_grad():
        for t, m in zip(enc.tables, masks):
            t.normal_()
            t.mul_(m.unsqueeze(1))  # what hard masking leaves before removal
    return enc, masks


@pytest.mark.parametrize("dim", [2, 3])
def test_removal_shrinks_storage_and_keeps_the_output(dim):
    enc, masks = _masked_encoding(dim)
    x = torch.rand(2000, dim)
    before = enc(x).detach()
    dense_params = sum(t.numel() for t in enc.tables)
    report = enc.remove_entries(masks)
    kept = sum(int(m.sum()) for m in masks)
    assert torch.allclose(enc(x), before, atol=1e-6)
    assert report["entries_kept"] == kept and report["params_kept"] == 2 * kept
    assert sum(t.numel() for t in enc.tables) == 2 * kept and report["params_dense"] == dense_params
    assert not enc.compacted(0) and enc.compacted(1) and enc.tables[1].shape == (0, 2)
    words = sum(-(-n // 32) for n in enc.sizes[1:])
    assert report["index_bytes"] == 2 * 4 * words  # bitmap + rank: 2 bits per removable entry
    assert report["bytes"] == 4 * (2 * kept + report["saliency_params"]) + report["index_bytes"]
    enc(x).sum().backward()  # the kept entries still train
    assert enc.tables[2].grad is not None and enc.tables[2].grad.shape == enc.tables[2].shape


def test_compacted_state_loads_into_a_fresh_encoding_and_back(tmp_path):
    enc, masks = _masked_encoding()
    enc.remove_entries(masks)
    torch.save(enc.state_dict(), tmp_path / "enc.pt")
    fresh = HashEncoding(dim=3, levels=5, log2_table_size=9, features=2, base_resolution=2, max_resolution=24,
                         saliency_resolution=4)
    fresh.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    x = torch.rand(500, 3)
    assert torch.equal(fresh(x), enc(x))
    dense = HashEncoding(dim=3, levels=5, log2_table_size=9, features=2, base_resolution=2, max_resolution=24,
                         saliency_resolution=4)
    fresh.load_state_dict(dense.state_dict())  # and a dense state turns it dense again
    assert not any(fresh.compacted(lv) for lv in range(5)) and torch.equal(fresh(x), dense(x))


def test_bad_masks_raise_before_anything_changes():
    enc, masks = _masked_encoding()
    tables = [t.detach().clone() for t in enc.tables]
    for bad in (masks[:-1], masks[:-1] + [masks[-1].float()], masks[:-1] + [masks[-1][:-1]]):
        with pytest.raises(ValueError):
            enc.remove_entries(bad)
        assert all(torch.equal(a, b) for a, b in zip(tables, enc.tables)) and not enc.compacted(1)
    enc.remove_entries(masks)
    with pytest.raises(ValueError, match="already compacted"):
        enc.remove_entries(masks)


# -- ADMM -------------------------------------------------------------------------------
def test_projection_onto_the_budget_set():
    v = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 2
    z = project_budget(v, 20.0)
    assert abs(float(z.sum()) - 20.0) < 1e-4 and float(z.min()) >= 0 and float(z.max()) <= 1
    inner = (z > 0) & (z < 1)  # KKT: z = v − τ on the free entries, one τ for all
    tau = v[inner] - z[inner]
    assert float(tau.max() - tau.min()) < 1e-5
    assert bool((v[z == 0] <= tau.mean() + 1e-5).all()) and bool((v[z == 1] >= 1 + tau.mean() - 1e-5).all())
    small = torch.tensor([0.2, -0.5, 1.7])
    assert torch.equal(project_budget(small, 2.0), torch.tensor([0.2, 0.0, 1.0]))  # fits: only the box
    with pytest.raises(ValueError, match="capacity"):
        project_budget(small, 4.0)


def test_admm_drives_a_toy_problem_to_its_budget_and_its_optimum():
    """min Σ a_i (1 − σ(G_i))² s.t. ‖σ(G)‖₁ ≤ C: every cell wants to be on, the budget allows
    C = 4 of 16; the optimum (KKT) is σ_i = max(0, 1 − λ/(2a_i)) with Σσ = C."""
    torch.manual_seed(0)
    grid = SaliencyGrid(2, 4, init_logit=0.0)
    a = torch.linspace(0.1, 1.6, 16).reshape(4, 4)
    admm = SaliencyADMM(sparsity=0.75, rho=1.0, every=10)
    state = admm.initialize_state(grid)
    opt = torch.optim.Adam(grid.parameters(), lr=0.05)
    for step in range(1, 1501):
        loss = (a * (1 - torch.sigmoid(grid.logits)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        admm.penalty_grad_(grid, state)
        opt.step()
        info = admm.step(grid, state, step)
    assert info["capacity"] == 4.0
    assert abs(float(grid.mass()) - 4.0) < 0.01 and info["residual"] < 1e-3
    lo, hi = 0.0, 10.0
    for _ in range(100):
        lam = (lo + hi) / 2
        lo, hi = (lam, hi) if float((1 - lam / (2 * a)).clamp(min=0).sum()) > 4 else (lo, lam)
    optimum = (1 - lam / (2 * a)).clamp(min=0)
    assert float((torch.sigmoid(grid.logits) - optimum).abs().max()) < 0.02


def test_admm_penalty_gradient_matches_autograd_and_budget_follows_a_schedule():
    grid = SaliencyGrid(3, 3)
    with torch.no_grad():
        grid.logits.normal_()
    admm = SaliencyADMM(sparsity=Linear(start_step=0, end_step=100, final_sparsity=0.5), rho=0.3)
    state = {"z": torch.rand(3, 3, 3), "u": torch.randn(3, 3, 3) * 0.1}
    admm.penalty(grid, state).backward()
    expected = grid.logits.grad.clone()
    grid.logits.grad = None
    admm.penalty_grad_(grid, state)
    assert torch.allclose(grid.logits.grad, expected, atol=1e-7)
    assert admm.capacity(grid, 0) == 27 and admm.capacity(grid, 50) == 27 * 0.75 and admm.capacity(grid, 100) == 13.5
    assert admm.step(grid, state, 7) == {}  # not an update step (every=16)
    with pytest.raises(ValueError, match="rho"):
        SaliencyADMM(rho=0)
    with pytest.raises(ValueError, match="every"):
        SaliencyADMM(every=0)
    with pytest.raises(ValueError, match="saliency sparsity"):
        SaliencyADMM(sparsity=1.0)
    with pytest.raises(ValueError, match="'z' and 'u'"):
        admm.penalty_grad_(grid, {"z": torch.zeros(2, 2, 2), "u": torch.zeros(2, 2, 2)})


# -- the callback -----------------------------------------------------------------------
class FullBatch(Dataset):
    def __init__(self, n=512, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 2, generator=g)
        inside = ((self.x - 0.3).norm(dim=1, keepdim=True) < 0.2).float()  # a disc on an empty background
        self.y = (inside * torch.sin(20 * self.x[:, :1])).expand(-1, 3).contiguous()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.x, self.y


class Field(pl.LightningModule):
    def __init__(self, saliency=5):
        super().__init__()
        self.encoding = HashEncoding(dim=2, levels=4, log2_table_size=7, features=2, base_resolution=4,
                                     max_resolution=32, saliency_resolution=saliency)
        self.head = nn.Linear(self.encoding.output_dim, 3)

    def forward(self, x):
        return self.head(self.encoding(x))

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(module, callback, steps, ckpt=None):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SparsityCallback(programs=[callback])])
    trainer.fit(module, DataLoader(FullBatch(), batch_size=None), ckpt_path=ckpt)
    return trainer


def test_callback_prunes_to_the_budget_and_removes_the_entries():
    torch.manual_seed(0)
    module = Field()
    cb = HashGridPruning(Linear(start_step=5, end_step=20, final_sparsity=0.6), update_every=5, rho=1e-3,
                         admm_every=4)
    _fit(module, cb, 30)
    enc = module.encoding
    report = cb.result
    dense = sum(enc.sizes)
    assert report["entries"] == dense and report["params_kept"] == sum(t.numel() for t in enc.tables)
    assert abs(report["kept_fraction"] - 0.4) < 2 / dense
    assert all(enc.compacted(lv) for lv in range(enc.levels))  # the floor keeps >= 1% per level
    assert all(t.shape[0] >= math.ceil(0.01 * n) for t, n in zip(enc.tables, enc.sizes))
    assert report["saliency_capacity"] == pytest.approx(0.4 * 25)
    assert cb.sparsity_report()["global"] == pytest.approx(0.6, abs=2 / dense)
    # the removed model computes what the masked one did: pruned rows were zero
    x = FullBatch().x
    masked = Field()
    masked.encoding.saliency.load_state_dict(enc.saliency.state_dict())
    masked.head.load_state_dict(module.head.state_dict())
    with torch.no_grad():
        for lv, t in enumerate(masked.encoding.tables):
            t.zero_()
            t[cb.controller.masks[f"encoding.tables.{lv}"]] = enc.tables[lv]
    assert torch.allclose(masked(x), module(x), atol=1e-6)


def test_usage_criterion_prefers_entries_of_salient_points():
    enc = HashEncoding(dim=2, levels=1, log2_table_size=10, base_resolution=8, max_resolution=8, saliency_resolution=9)
    with torch.no_grad():
        enc.saliency.logits[:5] = 20.0  # on for x <= 1/2
        enc.saliency.logits[5:] = -20.0  # off for x >= 5/8
    enc.record_usage = True
    crit = SaliencyUsage(relative=False)
    from sparsity_core.targets import Target
    from sparsity_core.layouts import Rows

    target = Target("tables.0", layout=Rows(0), param=enc.tables[0])
    crit.bind(enc, {"tables.0": 0})
    enc(torch.rand(4000, 2, generator=torch.Generator().manual_seed(0)))
    crit.observe(target, None)
    score = crit.score(target, None).view(9, 9)  # index = i + 9 j: score[j, i]
    assert float(score[:, :4].min()) > 1e6 * float(score[:, 6:].max())
    assert enc.take_usage(0) is None  # taken once


def test_usage_can_be_recorded_by_the_owner_with_per_point_weights():
    enc = HashEncoding(dim=2, levels=1, log2_table_size=10, base_resolution=8, max_resolution=8)
    enc.record_usage, enc.usage_from_forward = True, False
    x = torch.tensor([[0.1, 0.1], [0.9, 0.9]])  # cells (0, 0) and (7, 7), fractions 0.8 and 0.2
    enc(x)
    assert enc.take_usage(0) is None  # the forward records nothing for such an owner
    enc.record_points(x, torch.tensor([2.0, 0.0]))
    usage = enc.take_usage(0)  # index i + 9 j
    assert float(usage.sum()) == pytest.approx(2.0) and float(usage[8 + 9 * 8]) == 0.0
    assert float(usage[0]) == pytest.approx(2 * 0.2 * 0.2) and float(usage[1 + 9]) == pytest.approx(2 * 0.8 * 0.8)
    with pytest.raises(ValueError, match="weights"):
        enc.record_points(x, torch.ones(3))
    enc.record_usage = False
    enc.record_points(x, torch.ones(2))
    assert enc.take_usage(0) is None


def test_resume_gives_identical_masks_and_admm_state(tmp_path):
    kwargs = dict(schedule=Linear(start_step=4, end_step=16, final_sparsity=0.5), update_every=4, rho=1e-3,
                  admm_every=3, finalize=False)
    torch.manual_seed(0)
    straight = Field()
    cb_a = HashGridPruning(**kwargs)
    _fit(straight, cb_a, 20)

    torch.manual_seed(0)
    first = Field()
    cb_b = HashGridPruning(**kwargs)
    trainer = _fit(first, cb_b, 10)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    torch.manual_seed(1)
    resumed = Field()
    cb_c = HashGridPruning(**kwargs)
    _fit(resumed, cb_c, 20, ckpt=str(tmp_path / "mid.ckpt"))

    for name, mask in cb_a.controller.masks.items():
        assert torch.equal(mask, cb_c.controller.masks[name]), name
    for key in ("z", "u"):
        assert torch.equal(cb_a.admm_state[key], cb_c.admm_state[key])
    for a, c in zip(straight.encoding.tables, resumed.encoding.tables):
        assert torch.equal(a, c)


def test_callback_configuration_errors():
    class NoEncoding(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

    cb = HashGridPruning(0.5)
    with pytest.raises(ValueError, match="exactly one HashEncoding"):
        cb.attach(Host(model=NoEncoding()))
    with pytest.raises(ValueError, match="needs a saliency grid"):
        HashGridPruning(0.5).attach(Host(model=Field(saliency=None)))
    module = Field()
    with pytest.raises(ValueError, match="no HashEncoding named 'enc'"):
        HashGridPruning(0.5, encoding="enc").attach(Host(model=module))
    with pytest.raises(ValueError, match="infeasible budget"):
        HashGridPruning(0.999).attach(Host(model=module))  # the 1% floor per level cannot be met
    assert not module.encoding.record_usage  # the failed set-ups changed nothing
    with pytest.raises(ValueError, match="sparsity"):
        HashGridPruning(1.5)
