"""Evaluation helpers and the recipe, on tiny models."""
import argparse
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sparsity_plugins.video.evaluation import (
    add_rope_locality,
    denoise,
    psnr,
    relative_l2,
)
from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.patterns import block_mask
from sparsity_plugins.video.processors import install

from .helpers import model_and_inputs

ROOT = Path(__file__).resolve().parents[3]


def test_errors():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert relative_l2(x, x) == 0.0 and psnr(x, x) == math.inf
    assert relative_l2(x + torch.tensor([0.0, 0.0, 1.0]), x) == pytest.approx(1 / math.sqrt(14))
    assert psnr(x + 0.1, x) == pytest.approx(10 * math.log10(4 / 0.01))


def test_denoise_steps_the_clock_and_is_deterministic():
    model, x = model_and_inputs("wan")
    seen = []
    a = denoise(model, x, 3, on_step=seen.append)
    assert seen == [1, 2, 3] and torch.equal(a, denoise(model, x, 3))


def test_rope_locality_makes_heads_local():
    model, x = model_and_inputs("wan", heads=3, head_dim=64, layers=1)  # narrow heads: periodic side lobes
    x = dict(x, hidden_states=torch.randn(1, 4, 4, 16, 16))  # 4 frames of 8 × 8 tokens
    add_rope_locality(model, ["window", "frame", "temporal"])
    shapes = ["diagonal(t=1,h=2,w=2)", "diagonal", "multidiagonal(h=2,w=2)"]  # window, frame, temporal
    errors = {}

    def observe(layer, q, k, v, scale):
        dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        for h, spec in enumerate(shapes):
            m = block_mask(spec, session.layout, 8)
            out = masked_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], m, 8, scale)
            errors[h] = relative_l2(out, dense[:, h:h + 1])
        return dense
    with install(model, block_size=8) as session:
        session.observer = observe
        with torch.no_grad():
            model(**x)
    assert max(errors.values()) < 0.05, errors


def test_bad_locality_kinds():
    model, _ = model_and_inputs("wan")
    with pytest.raises(ValueError, match="valid"):
        add_rope_locality(model, ["diagonal"])
    cog, _ = model_and_inputs("cogvideox")
    with pytest.raises(ValueError, match="Wan's rotary layout"):
        add_rope_locality(cog, ["window"])


def test_recipe_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("recipe", ROOT / "recipes" / "video_sparse_attention.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    args = argparse.Namespace(heads=3, head_dim=32, layers=1, frames=2, size=16, block_size=16, steps=2,
                              calib_steps=2, error_budget=0.1, sparsity=None, dense_fraction=0.0,
                              structured=True, seed=0, out=str(tmp_path), dynamic="s2o", knob=0.0)
    got = recipe.run("wan", args)
    out = capsys.readouterr().out
    assert "final latent rel-L2" in out and (tmp_path / "wan_plan.json").exists()
    assert "s2o at 0.0: computed density 1.000 over 2 calls" in out  # ε = 0 never stops: dense
    assert got["s2o"]["psnr"] > 100
