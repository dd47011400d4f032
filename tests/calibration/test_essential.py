import pytest
import torch
from torch import nn

from sparsity_core.calibration import essential_sparsity
from sparsity_core.calibration.essential import knee
from sparsity_core.discovery import discover_targets


def test_knee_is_the_last_level_before_the_sharp_drop():
    levels = [0.1 * i for i in range(10)]
    metrics = [0.90, 0.90, 0.899, 0.898, 0.897, 0.895, 0.89, 0.70, 0.40, 0.20]
    assert knee(levels, metrics) == pytest.approx(0.6)
    assert knee(levels, [-m for m in metrics], higher_is_better=False) == pytest.approx(0.6)
    assert knee(levels, [0.5] * 10) == pytest.approx(0.9)  # flat: nothing drops


def test_sweep_restores_the_dense_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 16)
    with torch.no_grad():
        ref = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = discover_targets(model, skip_head=False)
    seen = []

    def fidelity(m):
        with torch.no_grad():
            seen.append(sum(int((t.param == 0).sum()) for t in targets))
            return float(torch.nn.functional.cosine_similarity(m(x), ref).mean())

    result = essential_sparsity(model, targets, fidelity, levels=[0.2, 0.5, 0.8, 0.95], plot=str(tmp_path / "e.png"))
    assert result.levels == [0.0, 0.2, 0.5, 0.8, 0.95] and result.dense == pytest.approx(1.0)
    assert seen == sorted(seen) and seen[0] == 0  # each level pruned from the dense weights
    assert result.metrics[-1] < result.metrics[0] and result.dropping_point in result.levels
    assert 0.0 <= result.within_tolerance <= result.levels[-1]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "e.png").exists() and result.plot
    except ImportError:
        assert result.plot is None and "matplotlib is not installed: plot skipped" in result.message


def test_bad_input_and_failed_evaluation_restore_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    targets = discover_targets(model, skip_head=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least 3 levels"):
        essential_sparsity(model, targets, lambda m: 1.0, levels=[0.5])
    with pytest.raises(ValueError, match="evaluate must be callable"):
        essential_sparsity(model, targets, 1.0)
    calls = []

    def bad(m):
        calls.append(1)
        return float("nan") if len(calls) == 2 else 1.0

    with pytest.raises(ValueError, match="evaluate returned nan at sparsity 0.5"):
        essential_sparsity(model, targets, bad, levels=[0.5, 0.7])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
