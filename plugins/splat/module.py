"""``GaussianSplatModule``: fit a 3D Gaussian Splatting scene from posed images with a
Lightning ``Trainer`` and any gsplat strategy (``DefaultStrategy``, ``BudgetedStrategy``).

Training follows gsplat's simple trainer (Kerbl et al., 2023): manual optimization with one
Adam per parameter (gsplat strategies need exactly one param group per optimizer, and
``strategy.ops`` replace the parameters and their moments in place), one random training
view per step, loss ``(1 − λ)·L1 + λ·(1 − SSIM)``, the means' learning rate decaying
exponentially to 1 % (scaled by the scene scale), the strategy's pre/post-backward hooks
around the backward pass. Rendering uses :func:`.render.render` (gsplat's CUDA rasterizer on
a GPU, the tiled torch renderer on a CPU).

Steps are counted by the module (``iteration``), not by ``trainer.global_step``: Lightning
counts every ``optimizer.step()`` of manual optimization, here one per parameter. The
training loader yields one view index per step, so ``Trainer(max_epochs=1)`` with
``steps`` items trains ``steps`` iterations. Validation renders the held-out views and logs
``val_psnr``, ``val_ssim`` and ``num_gaussians``.
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

from .budgeted import BudgetedStrategy, prune_to_budget
from .data import PosedImages
from .render import render

DEFAULT_LRS = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "colors": 2.5e-3}


def random_splats(n: int, extent: float, seed: int = 0, opacity: float = 0.1) -> Dict[str, Tensor]:
    """``n`` Gaussians uniform in the cube ``[−extent, extent]³``; each scale the mean
    distance to its 3 nearest neighbours (gsplat's initialisation), random rotations."""
    if n < 1 or not extent > 0:
        raise ValueError(f"need n >= 1 and extent > 0, got {n}, {extent}")
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
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if val is not None and (val.height, val.width) != (train.height, train.width):
            raise ValueError(f"train views are {train.height}x{train.width}, val views {val.height}x{val.width}")
        if not 0.0 <= ssim_lambda <= 1.0:
            raise ValueError(f"ssim_lambda must be in [0, 1], got {ssim_lambda!r}")
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
        return DataLoader(_Views(len(self.train_views), self.steps, self.seed), batch_size=None, shuffle=False)

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
        n = len(self.splats["means"])
        if isinstance(self.strategy, BudgetedStrategy) and n > self.strategy.budget and not self.strategy_state:
            # A budget below the starting count: scored pruning down to it before the first step, so
            # the count never exceeds the budget (the bare strategy raises instead).
            rank_zero_warn(f"{n} starting Gaussians exceed the budget {self.strategy.budget}: the lowest-scored "
                           f"{n - self.strategy.budget} are pruned before training")
            prune_to_budget(self.splats, opts, {}, self.strategy.budget, self.strategy)
        if not self.strategy_state:
            self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    def training_step(self, view: int, batch_idx: int):
        data = self.train_views
        step = self.iteration
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
        for opt in opts.values():
            opt.step()
        if self.with_stats:
            self.error_maps[view] = (colors - target).abs().mean(-1).detach()  # [1, H, W]
        post_kwargs = {"loss": float(loss)} if isinstance(self.strategy, BudgetedStrategy) else {}
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
        checkpoint["iteration"] = self.iteration

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for k in list(self.splats.keys()):
            self.splats[k] = nn.Parameter(torch.empty_like(state[f"splats.{k}"]))
        self.iteration = int(checkpoint.get("iteration", 0))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio for images in [0, 1]: ``−10·log10(MSE)``."""
    return -10.0 * torch.log10(F.mse_loss(pred.clamp(0, 1), target).clamp_min(1e-10))


def _ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM (Wang et al., 2004) of [C, H, W, 3] images through torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2), data_range=1.0)
