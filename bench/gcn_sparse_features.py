"""GCN on Cora with the features as a CSR matrix through the first layer vs dense features.

Cora's features are bag-of-words, 1.3 % non-zero (2,708 × 1,433). With dense ``X`` a training
epoch of the 2-layer GCN (hidden 16) is dominated by the first layer: input dropout over the
whole matrix and the two dense products ``X W₁^T`` (forward) and ``X^T G`` (the weight's
gradient). ``GCN(..., sparse_features=True)`` with ``x = data.x.to_sparse_csr()`` does
dropout on the stored values and both products sparse-times-dense
(:mod:`sparsity_plugins.graph.sparse_features`).

Timing: one training epoch (full-batch forward, cross-entropy on the 140 training nodes,
backward, Adam step) and one evaluation forward, the two configurations interleaved
(rotated each repeat) after 5 warm-up epochs each; every repeat times 10 epochs of each;
median over 7 repeats (quick: 3); ratios dense / sparse, threads and load average stated.

Numerics: from one seed, the two models' outputs and first-layer weight gradients after one
training step (same dropout draws), and the test accuracy at the best validation epoch after
200 epochs (quick: 50) of each.

Targets (issue 13): the sparse-feature epoch several times (>= 3x) faster than the dense one;
outputs and weight gradients equal to 1e-5.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from _common import median, parser, progress, result, rotations, start, table, target
from _data import SHARED, WORK
from sparsity_plugins.graph import GCN, planetoid

CONFIGS = ("dense x", "CSR x")


def cora():
    return planetoid("Cora", root=os.path.join(WORK, "planetoid"), source=os.path.join(SHARED, "planetoid"))[0]


def setup(data, config: str, seed: int = 0):
    torch.manual_seed(seed)
    sparse = config == "CSR x"
    model = GCN(data.num_features, int(data.y.max()) + 1, cached=True, sparse_features=sparse)
    x = data.x.to_sparse_csr() if sparse else data.x
    return model, torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4), x


def train_step(data, model, opt, x):
    model.train()
    opt.zero_grad()
    out = model(x, data.edge_index)
    F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
    opt.step()
    return out


def eval_forward(data, model, x):
    model.eval()
    with torch.no_grad():
        return model(x, data.edge_index)


def timing(data, repeats: int, epochs: int = 10):
    runs = {c: setup(data, c) for c in CONFIGS}
    for c, (model, opt, x) in runs.items():
        for _ in range(5):
            train_step(data, model, opt, x)
            eval_forward(data, model, x)
    train_ms = {c: [] for c in CONFIGS}
    eval_ms = {c: [] for c in CONFIGS}
    for order in rotations(list(CONFIGS), repeats):
        for c in order:
            model, opt, x = runs[c]
            t0 = time.perf_counter()
            for _ in range(epochs):
                train_step(data, model, opt, x)
            train_ms[c].append((time.perf_counter() - t0) / epochs * 1e3)
            t0 = time.perf_counter()
            for _ in range(epochs):
                eval_forward(data, model, x)
            eval_ms[c].append((time.perf_counter() - t0) / epochs * 1e3)
        progress(" ".join(f"{c}: {train_ms[c][-1]:.1f} ms" for c in CONFIGS))
    return {c: median(v) for c, v in train_ms.items()}, {c: median(v) for c, v in eval_ms.items()}


def one_step_difference(data):
    """Max |Δ| of the outputs and of conv1's weight gradient after one step from seed 0."""
    outs, grads = [], []
    for c in CONFIGS:
        model, opt, x = setup(data, c)
        torch.manual_seed(1)  # the same dropout draws: the CSR values are x's non-zeros in row-major order
        outs.append(train_step(data, model, opt, x).detach())
        model.zero_grad()
        torch.manual_seed(2)
        model.train()
        F.cross_entropy(model(x, data.edge_index)[data.train_mask], data.y[data.train_mask]).backward()
        grads.append(model.conv1.lin.weight.grad.clone())
    return float((outs[0] - outs[1]).abs().max()), float((grads[0] - grads[1]).abs().max())


def accuracy(data, config: str, epochs: int) -> float:
    model, opt, x = setup(data, config)
    best_val, best_test = -1.0, 0.0
    for _ in range(epochs):
        train_step(data, model, opt, x)
        pred = eval_forward(data, model, x).argmax(1)
        val = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        if val > best_val:
            best_val, best_test = val, 100.0 * float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    return best_test


def main() -> None:
    args = parser(__doc__).parse_args()
    start(args)
    t_run = time.perf_counter()
    data = cora()
    repeats, epochs = (3, 50) if args.quick else (7, 200)
    train_ms, eval_ms = timing(data, repeats)
    d_out, d_grad = one_step_difference(data)
    acc = {c: accuracy(data, c, epochs) for c in CONFIGS}
    load = os.getloadavg()[0]
    density = float((data.x != 0).float().mean())
    print(f"Cora GCN (hidden 16), features {data.num_nodes} x {data.num_features} ({density:.1%} non-zero), "
          f"{torch.get_num_threads()} thread(s), load average {load:.1f} (other jobs running); median of {repeats} "
          "interleaved repeats of 10 epochs")
    table(["features", "train ms/epoch", "eval forward ms", "train speed-up", "eval speed-up",
           f"test acc % ({epochs} ep.)"],
          [[c, f"{train_ms[c]:.2f}", f"{eval_ms[c]:.2f}", f"{train_ms['dense x'] / train_ms[c]:.2f}x",
            f"{eval_ms['dense x'] / eval_ms[c]:.2f}x", f"{acc[c]:.2f}"] for c in CONFIGS])
    print(f"after one step from one seed: max |Δ output| = {d_out:.2e}, max |Δ ∂L/∂W₁| = {d_grad:.2e}")
    speedup = train_ms["dense x"] / train_ms["CSR x"]
    target("sparse-feature training epoch several times faster", speedup >= 3.0, f"{speedup:.2f}x", ">= 3x")
    target("sparse-feature outputs and weight gradient equal the dense ones", max(d_out, d_grad) <= 1e-5,
           f"{max(d_out, d_grad):.1e}", "<= 1e-5")
    result("gcn_sparse_features", {"dense_train_ms": train_ms["dense x"], "csr_train_ms": train_ms["CSR x"],
                                   "train_speedup": speedup, "eval_speedup": eval_ms["dense x"] / eval_ms["CSR x"],
                                   "max_out_diff": d_out, "max_grad_diff": d_grad, "dense_acc": acc["dense x"],
                                   "csr_acc": acc["CSR x"], "threads": torch.get_num_threads(),
                                   "wall_s": time.perf_counter() - t_run})


if __name__ == "__main__":
    main()
