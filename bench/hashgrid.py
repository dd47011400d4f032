"""Hash-grid pruning (HollowNeRF) on a radiance field, with a 2D image fit as a second case.

HollowNeRF (Xie et al., 2023, https://arxiv.org/abs/2308.10122) claims that most hash entries
of an Instant-NGP radiance field (Müller et al., 2022) can go at little PSNR cost, because
empty space dominates a scene. The main rows test this on a real radiance field.

Radiance field: NeRF-synthetic "lego", the 100x100 npz on white (../shared/data); views
90-99 held out (quick: 90, 92, .., 98), trained on the other 90. The field is
``sparsity_plugins.splat.nerf.NeRFField``: a 3D hash encoding (L=8, F=2, T=2^14, N 16..256
over the box [-1.5, 1.5]^3; 2 dense levels, 6 hashed; 234k hash parameters), a density MLP
(one hidden layer of 64) and a colour MLP (two of 64, view direction as degree-2 spherical
harmonics). Volume rendering (NeRF): rays clipped to the box and to near/far = 2/6 (every
camera is 4.03 from the centre and the box's half diagonal is 2.6, so 2..6 keeps all the
object), a step of 2*sqrt(3)*1.5/128, a 32^3 occupancy grid whose empty cells are skipped
(Instant-NGP: a decaying maximum (0.6 per update) of the optical thickness sigma*step, a cell
empty below 0.01, updated every 16 steps from step 32), white background. Random rays (512 per
step, quick 256), Adam 1e-2, one seed, the same steps in every row.

- dense: the plain encoding;
- saliency k%: a 17^3 HollowNeRF saliency gate and ``HashGridPruning`` without the budget
  on the gate (its ADMM saliency sparsity 0): the kept fraction of hash parameters ramps
  (cubic) from 100% at 20% of the steps to k% at 60%, entries ranked by their use by the
  evaluated samples, each weighted by the gate and by its compositing weight T_i*alpha_i
  (``NeRFModule(usage="render")``: what the entry adds to the pixels); then fine-tuning;
  then the pruned entries are removed from storage (PSNR measured on the compacted field);
- ADMM k%: the same, plus HollowNeRF's ADMM driving the gate's mass to k% of its capacity
  (rho = 1e-5, z/u every 16 steps);
- small table k%: a dense encoding whose table size T' (any integer, hash modulo T') gives
  the largest parameter count <= k% of dense: pruning vs a small table from the start.

Below the table: the fraction of hash entries the occupied samples read at all (how
"hollow" the trained table is). Ablations (full run): ADMM 35% with every evaluated sample
counted alike (``usage="samples"``, the plugin's image criterion), and a 4x larger table
(T=2^16, dense and ADMM 35%).

Image (the former main case): lego view 0 (800x800 on white, Lanczos to 256x256) as the 2D
signal (x, y) -> RGB, Instant-NGP's image protocol (fresh random points per step, PSNR on
65,536 held-out points), the recipe's model (``recipes/hashgrid_prune.py``: 2D hash encoding
L=16, F=2, T=2^14, N 16..256, MLP 32-64-64-3; 17^2 gate; 4096 points per step, quick 1024);
rows dense, ADMM 35% and (full run) the 2^12 table (38% of the parameters).

Columns: held-out PSNR and its change against dense; hash parameters stored after removal
and their fraction of dense; index bytes (bitmap + rank); everything stored in bytes (kept
hash parameters, saliency grid, index; the MLPs, the same in every row, excluded); median
training ms per step (runs follow each other on a shared machine: indicative only); mean
samples the field evaluated per ray over training (occupancy skipping).

Targets (issue 13): <= 0.3 dB PSNR loss at 35% of the hash parameters, for the radiance
field (ADMM, HollowNeRF's method) and, as before, for the image.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytorch_lightning as pl
import torch

from _common import parser, progress, result, start, table, target
from sparsity_core import SparsityCallback
from sparsity_core.schedules import Cubic
from sparsity_plugins.splat.hashgrid import HashEncoding
from sparsity_plugins.splat.hashgrid_pruning import HashGridPruning
from sparsity_plugins.splat.nerf import NeRFField
from sparsity_plugins.splat.nerf_module import NeRFModule, PosedRays

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
from hashgrid_prune import TRAINER_DEFAULTS, ImageField, LegoImage, pruning_program  # noqa: E402

LEGO_NPZ = ROOT.parent / "shared" / "data" / "nerf_synthetic_lego" / "lego_100x100_white.npz"
KEEPS = (0.5, 0.35, 0.25)
FIELD = dict(levels=8, log2_table_size=14, features=2, base_resolution=16, max_resolution=256)
SALIENCY = 17
IMAGE = dict(levels=16, log2_table_size=14, features=2, base_resolution=16, max_resolution=256)


class StepTimer(pl.Callback):
    """Wall time of every training step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t)


def small_table(keep: float) -> int:
    """The largest table size T' whose dense encoding has <= ``keep`` x the dense parameters."""
    def params(t: int) -> int:
        return sum(HashEncoding(dim=3, levels=FIELD["levels"], table_size=t, base_resolution=FIELD["base_resolution"],
                                max_resolution=FIELD["max_resolution"], init_scale=0.0).sizes) * FIELD["features"]
    goal = keep * params(2 ** FIELD["log2_table_size"])
    lo, hi = 1, 2 ** FIELD["log2_table_size"]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if params(mid) <= goal else (lo, mid - 1)
    return lo


def hashgrid_program(keep: float, steps: int, admm: bool) -> HashGridPruning:
    """Cubic ramp of the kept hash parameters from 20% to 60% of the steps; with ``admm`` the
    gate's mass follows the same budget, else the gate is free (saliency sparsity 0)."""
    schedule = Cubic(start_step=max(1, int(0.2 * steps)), end_step=int(0.6 * steps), final_sparsity=1.0 - keep)
    return HashGridPruning(schedule, saliency=None if admm else 0.0, rho=1e-5, admm_every=16, update_every=25)


def fit(module: pl.LightningModule, data, steps: int, program: Optional[HashGridPruning]) -> List[float]:
    timer = StepTimer()
    callbacks: List[pl.Callback] = [timer] + ([SparsityCallback(programs=[program])] if program else [])
    pl.Trainer(max_steps=steps, callbacks=callbacks, **TRAINER_DEFAULTS).fit(module, datamodule=data)
    return timer.times


def nerf_run(data: PosedRays, steps: int, keep: Optional[float], admm: bool, table: Optional[int] = None,
             log2_table_size: int = FIELD["log2_table_size"], usage: str = "render",
             seed: int = 0) -> Dict[str, object]:
    pl.seed_everything(seed, verbose=False)
    field = NeRFField(**{**FIELD, "log2_table_size": log2_table_size}, table_size=table,
                      saliency_resolution=None if keep is None else SALIENCY)
    module = NeRFModule(field, occupancy_resolution=32, usage=usage, seed=seed)
    times = fit(module, data, steps, None if keep is None else hashgrid_program(keep, steps, admm))
    storage = field.encoding.storage()
    read = entries_read(module, data) if keep is None else None
    return {"psnr": module.psnr(data.test_poses, data.test_images, data.focal), **storage, "read": read,
            "step_ms": 1000 * statistics.median(times[10:] or times),
            "spr": sum(module.samples_per_ray) / len(module.samples_per_ray), "occupied": module.occupancy.fraction(),
            "mlp_params": field.mlp_parameters()}


@torch.no_grad()
def entries_read(module: NeRFModule, data: PosedRays, batches: int = 16) -> List[float]:
    """Per level, then over all levels, the fraction of hash entries that the evaluated
    (occupied) samples of ``batches`` random training ray batches read with a non-zero weight."""
    enc = module.field.encoding
    enc.record_usage, was, from_forward = True, module.training, enc.usage_from_forward
    enc.usage_from_forward = True  # every read, whatever its weight in the image
    module.train()
    gen = torch.Generator().manual_seed(1)
    origins, dirs, _ = data.rays
    for _ in range(batches):
        idx = torch.randint(origins.shape[0], (data.batch_rays,), generator=gen)
        module.render(origins[idx], dirs[idx])
    enc.record_usage, enc.usage_from_forward = False, from_forward
    module.train(was)
    read = [int((enc.take_usage(lv) > 0).sum()) for lv in range(enc.levels)]
    return [r / n for r, n in zip(read, enc.sizes)] + [sum(read) / sum(enc.sizes)]


def image_run(data: LegoImage, steps: int, keep: Optional[float], seed: int = 0, **model) -> Dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    field = ImageField(**{**IMAGE, **model, "saliency_resolution": None if keep is None else SALIENCY})
    times = fit(field, data, steps, None if keep is None else pruning_program(keep, steps))
    return {"psnr": field.psnr(*data.test), **field.encoding.storage(),
            "step_ms": 1000 * statistics.median(times[10:] or times), "spr": float("nan"),
            "mlp_params": sum(q.numel() for q in field.mlp.parameters())}


def print_rows(rows: Dict[str, Dict[str, object]], dense: Dict[str, object],
               refs: Optional[Dict[str, Dict[str, object]]] = None) -> None:
    """The table; each row against ``dense``, or against ``refs[name]`` where given."""
    out = []
    for name, r in rows.items():
        ref = (refs or {}).get(name, dense)
        spr = "" if r["spr"] != r["spr"] else f"{r['spr']:.1f}"
        out.append([name, f"{r['psnr']:.2f}", f"{r['psnr'] - ref['psnr']:+.2f}", r["params_kept"],
                    f"{r['params_kept'] / ref['params_kept']:.1%}", r["index_bytes"], r["bytes"],
                    f"{r['step_ms']:.1f}", spr])
    table(["config", "PSNR dB", "vs dense", "hash params", "of dense", "index B", "stored B", "ms/step",
           "samples/ray"], out)


def key(name: str) -> str:
    for a, b in ((" table", ""), ("%", ""), ("of ", ""), ("T=2^", "t"), (",", ""), (" ", "_")):
        name = name.replace(a, b)
    return name.lower()


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(threads=1)  # small gathers and scatter-adds: a second OpenMP thread slows them
    p.add_argument("--steps", type=int, default=None,
                   help="NeRF optimizer steps per run (default 400 quick, 1200 full)")
    p.add_argument("--image-steps", type=int, default=None, help="image steps per run (default 800 quick, 1500 full)")
    args = p.parse_args()
    start(args)
    steps = args.steps or (400 if args.quick else 1200)
    image_steps = args.image_steps or (800 if args.quick else 1500)
    rays, points = (256, 1024) if args.quick else (512, 4096)
    began, cpu = time.perf_counter(), time.process_time()

    data = PosedRays(LEGO_NPZ, held_out=range(90, 100, 2 if args.quick else 1), batch_rays=rays, seed=0)
    data.setup("fit")
    nerf: Dict[str, Dict[str, object]] = {"dense": nerf_run(data, steps, None, False)}
    progress(f"nerf dense: {nerf['dense']['psnr']:.2f} dB")
    for keep in (0.35,) if args.quick else KEEPS:
        configs = [(f"saliency {keep:.0%}", dict(keep=keep, admm=False)),
                   (f"ADMM {keep:.0%}", dict(keep=keep, admm=True)),
                   (f"small table {keep:.0%}", dict(keep=None, admm=False, table=small_table(keep)))]
        for name, kw in configs[1:] if args.quick else configs:
            nerf[name] = nerf_run(data, steps, **kw)
            progress(f"nerf {name}: {nerf[name]['psnr']:.2f} dB")
    ablation: Dict[str, Dict[str, object]] = {}
    if not args.quick:  # usage of every evaluated sample; a larger, emptier table
        ablation["ADMM 35%, usage of every sample"] = nerf_run(data, steps, 0.35, True, usage="samples")
        ablation["dense T=2^16"] = nerf_run(data, steps, None, False, log2_table_size=16)
        ablation["ADMM 35% of T=2^16"] = nerf_run(data, steps, 0.35, True, log2_table_size=16)
        progress("nerf ablation: " + ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in ablation.items()))
    nerf_s, nerf_cpu = time.perf_counter() - began, time.process_time() - cpu

    image = LegoImage(view=0, size=256, batch_size=points, test_points=65536, seed=0)
    image.setup("fit")
    img: Dict[str, Dict[str, object]] = {"dense": image_run(image, image_steps, None)}
    img["ADMM 35%"] = image_run(image, image_steps, 0.35)
    if not args.quick:
        img["dense T=2^12"] = image_run(image, image_steps, None, log2_table_size=12)
    progress("image: " + ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in img.items()))

    d = nerf["dense"]
    print(f"\nRadiance field: lego 100x100, {len(data.held_out)} held-out views, {steps} steps x {rays} rays, "
          f"MLPs {d['mlp_params']} parameters in every row, {args.threads} thread(s), {nerf_s:.0f} s wall, "
          f"{nerf_cpu:.0f} s CPU")
    print_rows(nerf, d)
    for name, r in [("dense", d)] + [(k, v) for k, v in ablation.items() if v["read"]]:
        print(f"{name}: hash entries read by the occupied samples of 16 ray batches: {r['read'][-1]:.0%} (per level "
              f"{' '.join(f'{f:.0%}' for f in r['read'][:-1])})")
    if ablation:
        print("\nAblations (the T=2^16 rows against dense T=2^16):")
        big = ablation["dense T=2^16"]
        print_rows(ablation, d, {k: big for k in ablation if "2^16" in k})
    print(f"\nImage: lego view 0, 256x256, {image_steps} steps x {points} points, PSNR on 65,536 held-out points, "
          f"MLP {img['dense']['mlp_params']} parameters; total {time.perf_counter() - began:.0f} s wall, "
          f"{time.process_time() - cpu:.0f} s CPU")
    print_rows(img, img["dense"])
    print()
    loss = d["psnr"] - nerf["ADMM 35%"]["psnr"]
    kept = nerf["ADMM 35%"]["params_kept"] / d["params_kept"]
    target("hashgrid radiance field <= 0.3 dB PSNR loss at 35% (ADMM)", loss <= 0.3,
           f"{loss:+.2f} dB on {len(data.held_out)} held-out views at {kept:.1%} of the hash parameters", "<= 0.3 dB")
    img_loss = img["dense"]["psnr"] - img["ADMM 35%"]["psnr"]
    target("hashgrid image <= 0.3 dB PSNR loss at 35%", img_loss <= 0.3,
           f"{img_loss:+.2f} dB on view 0 at {img['ADMM 35%']['params_kept'] / img['dense']['params_kept']:.1%} of "
           "the hash parameters", "<= 0.3 dB")
    values: Dict[str, object] = {"steps": steps, "loss_35": loss, "image_loss_35": img_loss}
    values.update({"psnr_" + key(name): r["psnr"] for name, r in {**nerf, **ablation}.items()})
    if ablation:
        values["loss_35_t16"] = ablation["dense T=2^16"]["psnr"] - ablation["ADMM 35% of T=2^16"]["psnr"]
    values["image_psnr_dense"], values["image_psnr_35"] = img["dense"]["psnr"], img["ADMM 35%"]["psnr"]
    values["seconds"] = round(time.perf_counter() - began)
    values["cpu_seconds"] = round(time.process_time() - cpu)
    result("hashgrid", values)


if __name__ == "__main__":
    main()
