"""The installed FTP routers of one model (:class:`TokenRouting`) and what :mod:`.ftp` needs
around them: block discovery, the model's output, the distillation error."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..observe import Forward
from .data import CalibrationStop, checked_forward
from .ftp_router import RoutedBlock, block_family

COUNTING = ("fraction of block-token computations skipped = Σ_l skipped valid tokens / Σ_l valid tokens "
            "(equal per-token block cost; attention products shrink faster, so a lower bound on block FLOPs saved)")


def find_blocks(model: nn.Module, what: str) -> Tuple[List[str], nn.Module]:
    """Names and container of the model's blocks: the first ``…encoder.layer`` or ``…blocks``
    ``ModuleList``/``Sequential`` whose children are all BERT-style layers or timm blocks."""
    for name, mod in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        if not (name.endswith("encoder.layer") or last == "blocks"):
            continue
        if any(isinstance(b, RoutedBlock) for b in mod):
            raise ValueError(f"{what}: {name} already has token routers; uninstall them first")
        if all(block_family(b) for b in mod):
            return [f"{name}.{i}" for i in range(len(mod))], mod
    raise ValueError(f"{what}: no recognised transformer blocks in {type(model).__name__} (looked for an "
                     "'encoder.layer' list of BERT-style layers or a 'blocks' list of timm ViT blocks)")


def model_output(out: Any) -> torch.Tensor:
    """The tensor a model returns: itself, ``last_hidden_state``, ``logits`` or the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "logits"):
        value = out.get(key) if isinstance(out, Mapping) else getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"cannot find an output tensor in {type(out).__name__}")


def relative_error(y: torch.Tensor, dense: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``Σ w‖y − y_dense‖² / Σ w‖y_dense‖²`` with ``w`` the token mask when it fits ``y``."""
    diff = (y - dense).pow(2)
    ref = dense.pow(2)
    if mask is not None and y.dim() == 3 and tuple(mask.shape) == tuple(y.shape[:2]):
        w = mask.to(y.dtype).unsqueeze(-1)
        diff, ref = diff * w, ref * w
    return diff.sum() / ref.sum().clamp_min(1e-12)


class TokenRouting:
    """FTP routers installed on a model's blocks (``RoutedBlock`` wrappers in place of the
    blocks; the model's ``state_dict`` keys gain ``.block.`` and ``.router.`` while installed).
    :meth:`uninstall` puts the original block objects back. Holds the ``schedule`` and
    allocation ``search`` of its training and the training ``history``."""

    def __init__(self, model: nn.Module, names: List[str], container: nn.Module, wrappers: List[RoutedBlock]):
        self.model, self.names, self.container, self.wrappers = model, names, container, wrappers
        self.schedule = None
        self.search: Optional[Dict[str, Any]] = None
        self.history: List[Dict[str, float]] = []
        self._report: Dict[str, Any] = {}
        self._hooks = [model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
                       model.register_forward_hook(self._clear_mask)]

    @classmethod
    def install(cls, model: nn.Module, hidden: int = 16, keep_first: int = 1) -> "TokenRouting":
        names, container = find_blocks(model, "TokenRouting.install")
        wrappers = []
        for i, block in enumerate(list(container)):
            w = RoutedBlock(block, block_family(block), hidden, keep_first)
            p = next(block.parameters(), None)
            if p is not None:
                w.to(device=p.device)
            wrappers.append(w)
        for i, w in enumerate(wrappers):
            container[i] = w
        return cls(model, names, container, wrappers)

    def uninstall(self) -> None:
        """Put the original blocks back and remove the hooks (idempotent)."""
        for i, w in enumerate(self.wrappers):
            if self.container[i] is w:
                self.container[i] = w.block
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _capture_mask(self, module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        for w in self.wrappers:
            w.valid = mask

    def _clear_mask(self, module, args, output) -> None:
        for w in self.wrappers:
            w.valid = None

    @staticmethod
    def token_mask(batch: Any) -> Optional[torch.Tensor]:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def router_parameters(self) -> List[nn.Parameter]:
        return [p for w in self.wrappers for p in w.router.parameters()]

    def set_targets(self, targets: Sequence[float]) -> None:
        for w, s in zip(self.wrappers, targets):
            w.target = float(s)

    @property
    def targets(self) -> Dict[str, float]:
        return {n: w.target for n, w in zip(self.names, self.wrappers)}

    @contextlib.contextmanager
    def mode(self, mode: str, relaxed: bool = False) -> Iterator[None]:
        saved = [(w.mode, w.relaxed) for w in self.wrappers]
        for w in self.wrappers:
            w.mode, w.relaxed, w.last = mode, relaxed, None
        try:
            yield
        finally:
            for w, (m, r) in zip(self.wrappers, saved):
                w.mode, w.relaxed = m, r

    def constraint_losses(self, targets: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
        """After a relaxed forward: ``Σ_l (ŝ_l − s_l)²`` and the mean guide BCE."""
        spars = torch.zeros(())
        guides = []
        for w, s in zip(self.wrappers, targets):
            if w.last is None:
                continue
            v, r = w.last["valid"], w.last["routable"]
            skipped = ((1.0 - w.last["gate"]) * v).sum() / v.sum().clamp_min(1)
            spars = spars + (skipped - s) ** 2
            static = w._static(w.last["score"], v, r).float()
            guides.append(nn.functional.binary_cross_entropy(w.last["p"][r].clamp(1e-6, 1 - 1e-6), static[r]))
        guide = torch.stack(guides).mean() if guides else torch.zeros(())
        return spars, guide

    @torch.no_grad()
    def calibrate_thresholds(self, batches: Iterable, forward: Optional[Forward] = None) -> None:
        """Block by block (earlier blocks final): ``θ_l`` so that ``z ≤ θ_l`` skips
        ``round(s_l · valid tokens)`` of the routable tokens of ``batches``."""
        fwd = checked_forward(forward, "calibrate_thresholds")
        for w in self.wrappers:
            w.threshold.fill_(float("-inf"))
        for w in self.wrappers:
            if w.target <= 0.0:
                continue
            logits, counts = [], [0]

            def record(z, routable, valid, counts=counts, logits=logits):
                logits.append(z[routable].float().cpu())
                counts[0] += int(valid.sum())
                raise CalibrationStop

            w.record = record
            try:
                with self.mode("learned"):
                    for b in batches:
                        try:
                            fwd(self.model, b)
                        except CalibrationStop:
                            pass
            finally:
                w.record = None
            z = torch.cat(logits)
            k = min(int(round(w.target * counts[0])), z.numel())
            w.threshold.fill_(float(torch.kthvalue(z, k).values) if k > 0 else float("-inf"))

    def state_dict(self) -> Dict[str, Any]:
        """Plain data: block names, targets, thresholds and router weights (``torch.save``-able,
        loads with ``weights_only=True``)."""
        return {"names": list(self.names), "targets": [w.target for w in self.wrappers],
                "thresholds": torch.stack([w.threshold.detach().cpu() for w in self.wrappers]),
                "routers": [{k: v.detach().cpu().clone() for k, v in w.router.state_dict().items()}
                            for w in self.wrappers]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Check the whole ``state`` against the installed routers, then assign it."""
        if list(state.get("names", [])) != self.names:
            raise ValueError(f"token routing state is for blocks {state.get('names')}, installed on {self.names}")
        for w, sd in zip(self.wrappers, state["routers"]):
            own = w.router.state_dict()
            if set(sd) != set(own) or any(tuple(sd[k].shape) != tuple(own[k].shape) for k in own):
                raise ValueError("token routing state: router shapes differ from the installed routers "
                                 f"({ {k: tuple(v.shape) for k, v in sd.items()} } vs { {k: tuple(v.shape) for k, v in own.items()} })")
        for w, sd, s, t in zip(self.wrappers, state["routers"], state["targets"], state["thresholds"]):
            w.router.load_state_dict(sd)
            w.target = float(s)
            w.threshold.copy_(t)

    def reset_counts(self) -> None:
        for w in self.wrappers:
            w.reset_counts()

    @torch.no_grad()
    def measure(self, batches: Iterable, forward: Optional[Forward] = None) -> Dict[str, Any]:
        """Run ``batches`` (eval, learned routing) and :meth:`report` the skips counted."""
        fwd = checked_forward(forward, "TokenRouting.measure")
        self.reset_counts()
        was = self.model.training
        self.model.eval()
        try:
            with self.mode("learned"):
                for b in batches:
                    fwd(self.model, b)
        finally:
            self.model.train(was)
        return self.report()

    def report(self) -> Dict[str, Any]:
        """Skip fractions counted since the last reset (per block and overall), the targets,
        router parameters and how the cost is counted."""
        seen = sum(w.seen for w in self.wrappers)
        return {"blocks": {n: (w.skipped / w.seen if w.seen else 0.0) for n, w in zip(self.names, self.wrappers)},
                "targets": self.targets,
                "skipped": sum(w.skipped for w in self.wrappers) / seen if seen else 0.0,
                "target": sum(self.targets.values()) / len(self.wrappers),
                "tokens": seen // max(1, len(self.wrappers)),
                "router_params": sum(p.numel() for p in self.router_parameters()),
                "counting": COUNTING}
