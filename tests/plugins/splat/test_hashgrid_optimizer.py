"""HashEncoding.remove_entries carries the optimizer: new tables, kept rows of the moments."""
import torch

from sparsity_plugins.splat.hashgrid import HashEncoding


def trained(steps=3):
    torch.manual_seed(0)
    enc = HashEncoding(dim=2, levels=3, log2_table_size=6, features=2, base_resolution=2, max_resolution=12,
                       saliency_resolution=3)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    x = torch.rand(64, 2)
    for _ in range(steps):
        opt.zero_grad()
        enc(x).square().sum().backward()
        opt.step()
    return enc, opt, x


def test_removal_rebinds_the_optimizer_with_the_kept_moments():
    enc, opt, x = trained()
    old = list(enc.tables)
    moments = [{k: opt.state[t][k].clone() for k in ("exp_avg", "exp_avg_sq")} for t in old]
    assert all(int(m["exp_avg"].count_nonzero()) > 0 for m in moments)  # the tables did train
    masks = [None, torch.arange(enc.sizes[1]) % 3 != 0, torch.arange(enc.sizes[2]) % 2 == 0]
    enc.remove_entries(masks, optimizers=[opt])

    owned = opt.param_groups[0]["params"]
    assert len(owned) == len(list(enc.parameters()))
    assert owned[0] is old[0] and enc.tables[0] is old[0]  # level kept whole: same parameter
    for lv in (1, 2):
        new = enc.tables[lv]
        assert new is not old[lv] and owned[lv] is new and old[lv] not in opt.state
        assert new.shape == (int(masks[lv].sum()), 2)
        assert torch.equal(new.detach(), old[lv].detach()[masks[lv]])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[new][key], moments[lv][key][masks[lv]])
        assert float(opt.state[new]["step"]) == 3.0

    before = [t.detach().clone() for t in enc.tables]
    opt.zero_grad()
    enc(x).square().sum().backward()
    opt.step()
    for lv in (1, 2):  # the optimizer updates the live, compacted tables
        assert not torch.equal(enc.tables[lv].detach(), before[lv])
        assert float(opt.state[enc.tables[lv]]["step"]) == 4.0


def test_a_single_optimizer_may_be_passed_and_the_argument_is_optional():
    enc, opt, _ = trained(steps=1)
    mask = torch.arange(enc.sizes[2]) < 5
    enc.remove_entries([None, None, mask], opt)
    assert opt.param_groups[0]["params"][2] is enc.tables[2] and opt.state[enc.tables[2]]["exp_avg"].shape == (5, 2)
    enc2, opt2, _ = trained(steps=1)
    old = enc2.tables[2]
    enc2.remove_entries([None, None, mask])  # no optimizer: it keeps the old table
    assert opt2.param_groups[0]["params"][2] is old and enc2.tables[2].shape == (5, 2)
