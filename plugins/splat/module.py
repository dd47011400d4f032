"""``GaussianSplatModule``: fit a 3D Gaussian Splatting scene from posed images with a
Lightning ``Trainer`` and any gsplat strategy (``DefaultStrategy``, ``BudgetedStrategy``).

Training follows gsplat's simple trainer (Kerbl et al., 2023): manual optimization with one
Adam per parameter (gsplat strategies need exactly one param group per optimizer, and
``strategy.ops`` replace the parameters and their moments in place), one random training
view per step, loss ``(1 − λ)·L1 + λ·(1 − SSIM)``, the means' learning rate decaying
exponentially to 1 % (scaled by the scene scale), the strategy's pre/post-backward hooks
around the backward pass. Rendering uses :func:`.render.render` (gsplat's CUDA rasterizer on
a GPU, the tiled torch renderer on a CPU).

Steps are counted by the module (``iteration``); ``trainer.global_step`` counts them too:
Lightning counts the ``step()`` calls of its optimizer wrappers, so the first parameter's
optimizer steps through its wrapper and the others directly (one count per iteration, and
``ModelCheckpoint(every_n_train_steps=k)`` saves every ``k`` iterations). The training
loader yields one view index per step, so ``Trainer(max_epochs=1)`` with ``steps`` items
trains ``steps`` iterations. Validation renders the held-out views and logs
``val_psnr``, ``val_ssim`` and ``num_gaussians``.

Checkpoints hold, besides Lightning's own entries, ``checkpoint["gaussian_splat"]``: the
iteration, the strategy state as plain data (:func:`.budgeted.state_to_plain`: the growth
schedule as its fields, the per-Gaussian statistics as tensors), the per-view error maps and
the torch RNG state, so that ``Trainer.fit(module, ckpt_path=...)`` continues the run where it
stopped (same counts, same growth curve, same random choices) and the file loads with
``torch.load(..., weights_only=True)``. The parameters are rebuilt at the saved count before
Lightning loads them (a grown scene loads into a fresh module), so the optimizers, built after,
match. Each step's view is ``view_order[iteration]`` rather than the loader's item, because
Lightning restarts a map-style loader at its first item when it resumes mid-epoch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import pytorch_lightning as pl
import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sparsity_core.validation import check_int, check_positive, check_range

from .budgeted import BudgetedStrategy, prune_to_budget, state_from_plain, state_to_plain
from .data import PosedImages
from .render import render

CKPT_KEY = "gaussian_splat"
DEFAULT_LRS = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "colors": 2.5e-3}


def random_splats(n: int, extent: float, seed: int = 0, opacity: float = 0.1) -> Dict[str, Tensor]:
    """``n`` Gaussians uniform in the cube ``[−extent, extent]³``; each scale the mean
    distance to its 3 nearest neighbours (gsplat's initialisation), random rotations."""
    check_int(n, "n", 1)
    check_positive(extent, "extent")
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * extent
    k = min(3, n - 1)
    dist = torch.empty(n)
    for start in range(0, n, 2048):  # nearest neighbours in chunks: no n×n matrix
        d = torch.cdist(means[start:start + 2048], means)
        dist[start:start + 2048] = d.topk(k + 1, largest=False).values[:, 1:].mean(-1) if k else extent
    return {"means": means, "scales": torch.log(dist.clamp_min(1e-6)).unsqueeze(-1).repeat(1, 3),
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.full((n,), math.log(opacity / (1 - opacity))),
            "colors": torch.logit(torch.full((n, 3), 0.5) + 0.1 * (torch.rand(n, 3, generator=g) - 0.5))}


class _Views(torch.utils.data.Dataset):
    def __init__(self, count: int, steps: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.order = torch.cat([torch.randperm(count, generator=g) for _ in range(-(-steps // count))])[:steps]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> int:
        return int(self.order[i])


class _ViewLoader(DataLoader):
    """The training loader. Nothing in it needs resuming (each step's view is
    ``view_order[iteration]``), so it says so to Lightning (``state_dict``), which otherwise
    warns that a mid-epoch resume of a plain loader is unreliable."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class GaussianSplatModule(pl.LightningModule):
    """Fit Gaussians to ``train`` views; evaluate on ``val`` views.

    Args:
        train, val: :class:`.data.PosedImages`.
        strategy: a gsplat ``Strategy`` (``DefaultStrategy()``, ``BudgetedStrategy(...)``).
        steps: training iterations (one view each).
        splats: initial parameters (``means, scales, quats, opacities, colors``; colours as
            logits) or ``None`` for :func:`random_splats` with ``num_points`` / ``extent``.
        ssim_lambda: λ of the D-SSIM term.
        background: RGB behind the scene (the lego npz views are composited on white).
        lrs: learning rates per parameter (means scaled by the scene scale).
        tile_size, backend: passed to :func:`.render.render`.
        with_stats: render with contribution statistics and the view's last error map
            (Taming-3DGS scores; ``BudgetedStrategy`` reads them when present).
    """

    def __init__(self, train: PosedImages, val: Optional[PosedImages], strategy, steps: int = 3000,
                 splats: Optional[Dict[str, Tensor]] = None, num_points: int = 5000, extent: float = 1.5,
                 ssim_lambda: float = 0.2, background=(1.0, 1.0, 1.0), lrs: Optional[Dict[str, float]] = None,
                 tile_size: Optional[int] = None, backend: str = "auto", with_stats: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        check_int(steps, "steps", 1)
        if val is not None and (val.height, val.width) != (train.height, train.width):
            raise ValueError(f"train views are {train.height}x{train.width}, val views {val.height}x{val.width}")
        check_range(ssim_lambda, "ssim_lambda")
        self.automatic_optimization = False
        self.train_views, self.val_views, self.strategy = train, val, strategy
        self.steps, self.ssim_lambda, self.seed = steps, ssim_lambda, seed
        self.tile_size, self.backend, self.with_stats = tile_size, backend, with_stats
        self.lrs = {**DEFAULT_LRS, **(lrs or {})}
        init = splats if splats is not None else random_splats(num_points, extent, seed)
        missing = {"means", "scales", "quats", "opacities", "colors"} - set(init)
        if missing:
            raise ValueError(f"splats lack {sorted(missing)}")
        self.splats = nn.ParameterDict({k: nn.Parameter(v.detach().clone().float()) for k, v in init.items()})
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32), persistent=False)
        self.scene_scale = train.scene_scale()
        self.iteration = 0
        self.error_maps: Dict[int, Tensor] = {}
        self.strategy_state: Dict[str, Any] = {}
        self.history: List[Dict[str, float]] = []
        self.view_order = _Views(len(train), steps, seed)  # the view of each iteration
        self._pending_rng: Optional[Dict[str, Tensor]] = None  # from a checkpoint, set before the next step

    # -- rendering ------------------------------------------------------------------------
    def render_views(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, loss_map: Optional[Tensor] = None,
                     stats: bool = False):
        p = self.splats
        bg = self.background.expand(viewmats.shape[0], 3)
        kwargs = {"backgrounds": bg}
        if stats:
            kwargs.update(with_stats=True, loss_map=loss_map)
        return render(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]),
                      torch.sigmoid(p["colors"]), viewmats, Ks, width, height, backend=self.backend,
                      tile_size=self.tile_size, **kwargs)

    def forward(self, viewmats: Tensor, Ks: Tensor) -> Tensor:
        """Rendered images [C, H, W, 3] of the training resolution."""
        return self.render_views(viewmats, Ks, self.train_views.width, self.train_views.height)[0]

    # -- training -------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return _ViewLoader(self.view_order, batch_size=None, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        n = len(self.val_views) if self.val_views is not None else 0
        return DataLoader(list(range(n)), batch_size=None, shuffle=False)

    def configure_optimizers(self):
        scale = {"means": self.scene_scale}
        return [torch.optim.Adam([p], lr=self.lrs[k] * scale.get(k, 1.0), eps=1e-15) for k, p in self.splats.items()]

    def _raw_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return {k: o.optimizer for k, o in zip(self.splats.keys(), opts)}

    def on_fit_start(self) -> None:
        """Checks before the first step, whatever the strategy (gsplat's own use ``assert``)."""
        opts = self._raw_optimizers()
        for name, p in self.splats.items():
            if not torch.isfinite(p).all():
                raise ValueError(f"splats[{name!r}] has NaN/Inf entries")
        for name, opt in opts.items():
            if len(opt.param_groups) != 1:
                raise ValueError(f"the optimizer of {name!r} has {len(opt.param_groups)} param groups; gsplat "
                                 "strategies need exactly one per parameter")
        self.strategy.check_sanity(self.splats, opts)
        device = self.splats["means"].device  # a restored state is loaded on the CPU
        self.strategy_state = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.strategy_state.items()}
        self.error_maps = {k: v.to(device) for k, v in self.error_maps.items()}
        n = len(self.splats["means"])
        if isinstance(self.strategy, BudgetedStrategy) and n > self.strategy.budget and not self.strategy_state:
            # A budget below the starting count: scored pruning down to it before the first step, so
            # the count never exceeds the budget (the bare strategy raises instead).
            rank_zero_warn(f"{n} starting Gaussians exceed the budget {self.strategy.budget}: the lowest-scored "
                           f"{n - self.strategy.budget} are pruned before training")
            prune_to_budget(self.splats, opts, {}, self.strategy.budget, self.strategy)
        if not self.strategy_state:
            self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    def training_step(self, batch: int, batch_idx: int):
        """One iteration on the view ``view_order[iteration]`` (``batch`` is that view, except
        after a mid-epoch resume, where Lightning restarts the loader)."""
        self._restore_rng()
        data = self.train_views
        step = self.iteration
        view = self.view_order[step % len(self.view_order)]
        opts = self._raw_optimizers()
        loss_map = self.error_maps.get(view) if self.with_stats else None
        colors, _, info = self.render_views(data.viewmats[view:view + 1], data.Ks[view:view + 1], data.width,
                                            data.height, loss_map=loss_map, stats=self.with_stats)
        target = data.images[view:view + 1].to(colors.device)
        l1 = (colors - target).abs().mean()
        loss = (1 - self.ssim_lambda) * l1 + self.ssim_lambda * (1 - _ssim(colors, target))
        self.strategy.step_pre_backward(self.splats, opts, self.strategy_state, step, info)
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        decay = 0.01 ** (1.0 / self.steps)  # means' lr to 1 % at the end
        opts["means"].param_groups[0]["lr"] = self.lrs["means"] * self.scene_scale * decay ** step
        wrapped = self.optimizers()
        (wrapped[0] if isinstance(wrapped, list) else wrapped).step()  # counted by Lightning: global_step
        for opt in list(opts.values())[1:]:
            opt.step()
        if self.with_stats:
            self.error_maps[view] = (colors - target).abs().mean(-1).detach()  # [1, H, W]
        post_kwargs = {"loss": float(loss.detach())} if isinstance(self.strategy, BudgetedStrategy) else {}
        self.strategy.step_post_backward(self.splats, opts, self.strategy_state, step, info, **post_kwargs)
        self.iteration += 1
        self.log_dict({"train_loss": loss.detach(), "num_gaussians": float(len(self.splats["means"]))},
                      batch_size=1, prog_bar=True)
        return loss.detach()

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, view: int, batch_idx: int):
        data = self.val_views
        colors = self.render_views(data.viewmats[view:view + 1], data.Ks[view:view + 1], data.width, data.height)[0]
        target = data.images[view:view + 1].to(colors.device)
        self.log_dict({"val_psnr": psnr(colors, target), "val_ssim": _ssim(colors, target)}, batch_size=1)

    @torch.no_grad()
    def evaluate(self, views: Optional[PosedImages] = None) -> Dict[str, float]:
        """Mean PSNR / SSIM over ``views`` (default: the validation views) and the count."""
        views = views or self.val_views
        if views is None:
            raise ValueError("no views to evaluate")
        ps, ss = [], []
        for i in range(len(views)):
            colors = self.render_views(views.viewmats[i:i + 1], views.Ks[i:i + 1], views.width, views.height)[0]
            ps.append(float(psnr(colors, views.images[i:i + 1])))
            ss.append(float(_ssim(colors, views.images[i:i + 1])))
        return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss), "num_gaussians": len(self.splats["means"])}

    @torch.no_grad()
    def save_renders(self, folder: Union[str, Path], views: Optional[PosedImages] = None, prefix: str = "view"
                     ) -> List[Path]:
        """Render ``views`` (default: validation) side by side with the ground truth as PNGs."""
        from PIL import Image

        views = views or self.val_views
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(len(views)):
            colors = self.render_views(views.viewmats[i:i + 1], views.Ks[i:i + 1], views.width, views.height)[0]
            pair = torch.cat([colors[0], views.images[i].to(colors.device)], dim=1).clamp(0, 1)
            path = folder / f"{prefix}_{i:03d}.png"
            Image.fromarray((pair.cpu().numpy() * 255 + 0.5).astype("uint8")).save(path)
            paths.append(path)
        return paths

    # -- checkpoints: the Gaussians' count changes, so the shapes are restored first -------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Store what a resume needs beyond the parameters and optimizers (module docstring)."""
        rng = self._pending_rng
        if rng is None:
            rng = {"cpu": torch.get_rng_state()}
            device = self.splats["means"].device
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
        checkpoint[CKPT_KEY] = {"iteration": self.iteration, "strategy_state": state_to_plain(self.strategy_state),
                                "error_maps": {int(k): v.detach().clone() for k, v in self.error_maps.items()},
                                "rng": dict(rng)}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Check the whole saved entry (:meth:`_check_checkpoint`), then rebuild the parameters
        at the saved count (Lightning copies the values in next and builds the optimizers on
        them) and restore the iteration, strategy state, error maps and RNG state (the RNG is
        applied before the next step). Anything missing or inconsistent raises ``ValueError``
        and changes nothing."""
        shapes, iteration, state, maps, rng = self._check_checkpoint(checkpoint)
        for k, p in self.splats.items():
            self.splats[k] = nn.Parameter(torch.empty(shapes[k], dtype=p.dtype, device=p.device),
                                          requires_grad=p.requires_grad)
        self.iteration, self.strategy_state, self.error_maps = iteration, state, dict(maps)
        self._pending_rng = {k: v.cpu() for k, v in rng.items()}

    def _check_checkpoint(self, checkpoint: Dict[str, Any]):
        """The parameter shapes and the decoded entry of a checkpoint, after checking that
        everything a resume needs is there and fits this module and its strategy."""
        saved = checkpoint.get(CKPT_KEY)
        if not isinstance(saved, dict):
            raise ValueError(f"the checkpoint has no {CKPT_KEY!r} entry (saved by an older version?): the iteration "
                             "and strategy state cannot be restored")
        for key in ("iteration", "strategy_state", "error_maps", "rng"):
            if key not in saved:
                raise ValueError(f"checkpoint[{CKPT_KEY!r}] lacks {key!r}")
        params, shapes = checkpoint.get("state_dict", {}), {}
        for k, p in self.splats.items():
            t = params.get(f"splats.{k}")
            if not isinstance(t, Tensor) or t.dim() != p.dim() or t.shape[1:] != p.shape[1:]:
                raise ValueError(f"the checkpoint's 'splats.{k}' is missing or not shaped [N, {list(p.shape[1:])}]")
            shapes[k] = t.shape
        counts = {k: s[0] for k, s in shapes.items()}
        n = counts["means"]
        if set(counts.values()) != {n}:
            raise ValueError(f"the checkpoint's splats disagree on the Gaussian count: {counts}")
        iteration = saved["iteration"]
        iteration = check_int(iteration, "the saved iteration", 0)
        state = state_from_plain(saved["strategy_state"])
        expected = set(self.strategy.initialize_state(scene_scale=self.scene_scale))
        if state and set(state) != expected:  # empty: saved before the first step
            raise ValueError(f"the saved strategy state does not fit {type(self.strategy).__name__}: missing "
                             f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}")
        for k, v in state.items():  # gsplat's ops index every state tensor by Gaussian
            if isinstance(v, Tensor) and (v.dim() == 0 or len(v) != n):
                raise ValueError(f"saved strategy state {k!r} has shape {list(v.shape)}, not one row per "
                                 f"Gaussian ({n})")
        maps, shape = saved["error_maps"], (1, self.train_views.height, self.train_views.width)
        if not isinstance(maps, dict) or any(
                not isinstance(k, int) or not 0 <= k < len(self.train_views)
                or not isinstance(v, Tensor) or tuple(v.shape) != shape for k, v in maps.items()):
            raise ValueError(f"the saved error maps must map train view indices to {list(shape)} tensors")
        rng = saved["rng"]
        if (not isinstance(rng, dict) or "cpu" not in rng
                or any(not isinstance(v, Tensor) or v.dtype != torch.uint8 for v in rng.values())):
            raise ValueError("the saved RNG state must be a dict of uint8 tensors with a 'cpu' entry")
        return shapes, iteration, state, maps, rng

    def _restore_rng(self) -> None:
        """Set the torch RNG saved in the checkpoint (gsplat's split and the strategy's
        sampling draw from it) right before the first step after a resume: setting it when
        loading would be undone by what Lightning draws while it sets up the loaders."""
        if self._pending_rng is None:
            return
        torch.set_rng_state(self._pending_rng["cpu"])
        device = self.splats["means"].device
        if "cuda" in self._pending_rng and device.type == "cuda":
            torch.cuda.set_rng_state(self._pending_rng["cuda"], device)
        self._pending_rng = None


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio for images in [0, 1]: ``−10·log10(MSE)``."""
    return -10.0 * torch.log10(F.mse_loss(pred.clamp(0, 1), target).clamp_min(1e-10))


def _ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM (Wang et al., 2004) of [C, H, W, 3] images through torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0)
