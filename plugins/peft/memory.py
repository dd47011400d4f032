"""Memory accounting of fine-tuning methods on CPU, in one table, with peft's LoRA as baseline.

Per method, on a fresh model from ``model_factory``:

- ``trainable``: parameters with ``requires_grad`` (``total``: all parameters);
- ``optimizer_state_bytes``: bytes of every tensor in ``optimizer.state`` after one real
  optimizer step (AdamW by default: two moments per trainable entry, plus step counters);
- ``adapter_bytes``: bytes on disk of what the method saves (our adapters: tensors + config
  JSON, :mod:`.persist`; peft: ``save_pretrained``'s ``adapter_model.*`` + ``adapter_config.json``;
  full fine-tuning: the whole state dict);
- ``peak_tensor_bytes``: the peak of live tensor bytes during one training step (zero_grad,
  forward, backward, optimizer step) above those live at its start, from the
  ``torch.profiler`` memory timeline (``profile_memory=True``; ``peak_source`` says
  ``"timeline"``; where that private API is missing, ``"ops"``: the running sum of each op's
  self memory, which misses allocations freed inside one op). ``tracemalloc`` is not used:
  it sees Python's allocator only, not the tensor storage torch allocates;
- ``peak_rss_bytes``: the process's resident-set high-water mark during another step (Linux:
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the RSS at its start;
  it includes allocator caching and is coarse; ``None`` where it cannot be reset;
- ``step_seconds``: wall time of that step.
On CUDA the same table would use ``torch.cuda.max_memory_allocated``; this module measures CPU.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .model import AdapterConfig, inject_adapters

LossFn = Callable[[nn.Module, Any], torch.Tensor]
OptimizerFactory = Callable[[List[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class MemoryRow:
    method: str
    trainable: int
    total: int
    optimizer_state_bytes: int
    adapter_bytes: int
    peak_tensor_bytes: int
    peak_rss_bytes: Optional[int]
    step_seconds: float
    peak_source: str

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class PeftLoRA:
    """The baseline: ``peft.LoraConfig(r, lora_alpha, target_modules, modules_to_save)``; a
    string ``target_modules`` is a full-match regex in peft as here."""

    r: int = 8
    alpha: Optional[float] = None
    target_modules: Union[str, Sequence[str]] = ()
    modules_to_save: Optional[Sequence[str]] = None


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def _dir_bytes(directory: str, names: Optional[Sequence[str]] = None) -> int:
    files = names if names is not None else os.listdir(directory)
    return sum(os.path.getsize(os.path.join(directory, f)) for f in files if os.path.isfile(os.path.join(directory, f)))


def _rss() -> Tuple[Optional[int], Optional[int]]:
    """``(VmRSS, VmHWM)`` in bytes (Linux), else ``(None, None)``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None, None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _tensor_peak(prof: Any) -> Tuple[int, str]:
    """Peak of live tensor bytes above the start, from a memory-profiled ``torch.profiler`` run."""
    try:
        from torch.profiler._memory_profiler import Action

        live = peak = start = 0
        for t, action, _key, size in prof._memory_profile().timeline:
            if action == Action.PREEXISTING:
                live += size
                start = peak = live
            elif action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        return int(peak - start), "timeline"
    except Exception:  # noqa: BLE001 - private API: fall back to op-level self memory
        events = sorted(prof.events(), key=lambda e: e.time_range.start)
        live = peak = 0
        for e in events:
            live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
            peak = max(peak, live)
        return int(peak), "ops"


def measure(method: str, model: nn.Module, batch: Any, loss_fn: LossFn, save: Callable[[str], Optional[Sequence[str]]],
            optimizer: Optional[OptimizerFactory] = None) -> MemoryRow:
    """One row for a model already set up for ``method`` (its trainable parameters are those
    with ``requires_grad``); ``save(directory)`` writes what the method stores and returns the
    file names to count (``None``: every file)."""
    from torch.profiler import ProfilerActivity, profile

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{method}: the model has no trainable parameters")
    opt = (optimizer or (lambda ps: torch.optim.AdamW(ps, lr=1e-3)))(params)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.step()

    step()
    state_bytes = optimizer_state_bytes(opt)
    rss0, _ = _rss()
    can_reset = rss0 is not None and _reset_peak_rss()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    _, hwm = _rss()
    peak_rss = (hwm - rss0) if can_reset and hwm is not None else None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    peak, source = _tensor_peak(prof)
    with tempfile.TemporaryDirectory() as tmp:
        names = save(tmp)
        on_disk = _dir_bytes(tmp, names)
    return MemoryRow(method=method, trainable=sum(p.numel() for p in params),
                     total=sum(p.numel() for p in model.parameters()), optimizer_state_bytes=state_bytes,
                     adapter_bytes=on_disk, peak_tensor_bytes=peak, peak_rss_bytes=peak_rss, step_seconds=seconds,
                     peak_source=source)


def _save_full(model: nn.Module) -> Callable[[str], Sequence[str]]:
    def save(directory: str) -> Sequence[str]:
        torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
        return ["model.pt"]

    return save


def _peft_lora(model: nn.Module, spec: PeftLoRA) -> Tuple[nn.Module, Callable[[str], Sequence[str]]]:
    from ._deps import peft

    p = peft()
    config = p.LoraConfig(r=spec.r, lora_alpha=spec.alpha if spec.alpha is not None else spec.r,
                          target_modules=spec.target_modules if isinstance(spec.target_modules, str)
                          else list(spec.target_modules),
                          modules_to_save=list(spec.modules_to_save) if spec.modules_to_save else None)
    wrapped = p.get_peft_model(model, config)

    def save(directory: str) -> Sequence[str]:
        wrapped.save_pretrained(directory)
        return [f for f in os.listdir(directory) if f.startswith("adapter_")]

    return wrapped, save


def compare_memory(model_factory: Callable[[], nn.Module], batch: Any, loss_fn: LossFn,
                   methods: Mapping[str, Union[AdapterConfig, PeftLoRA, str]],
                   optimizer: Optional[OptimizerFactory] = None) -> List[MemoryRow]:
    """A row per entry of ``methods``: ``"full"`` (every parameter trains), a :class:`PeftLoRA`
    (the baseline; ``ImportError`` naming the extra without peft, see :func:`peft_available`)
    or an :class:`AdapterConfig` (ours). Every model comes from ``model_factory()`` after
    ``torch.manual_seed(0)``."""
    rows = []
    for name, spec in methods.items():
        torch.manual_seed(0)
        model = model_factory()
        if spec == "full":
            model.requires_grad_(True)
            rows.append(measure(name, model, batch, loss_fn, _save_full(model), optimizer))
        elif isinstance(spec, PeftLoRA):
            wrapped, save = _peft_lora(model, spec)
            rows.append(measure(name, wrapped, batch, loss_fn, save, optimizer))
        elif isinstance(spec, AdapterConfig):
            adapters = inject_adapters(model, spec)
            rows.append(measure(name, model, batch, loss_fn,
                                lambda d, a=adapters: [os.path.basename(p) for p in a.save(d).values()], optimizer))
        else:
            raise ValueError(f"method {name!r}: expected 'full', a PeftLoRA or an AdapterConfig, got {spec!r}")
    return rows


def peft_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("peft") is not None
    except ValueError:  # pragma: no cover
        return False


def memory_table(rows: Sequence[MemoryRow], baseline: Optional[str] = None) -> str:
    """A Markdown table of ``rows``; with ``baseline`` (a method name), the trainable parameters
    and optimizer-state bytes are also shown relative to that row's."""
    base = next((r for r in rows if r.method == baseline), None)
    head = ["method", "trainable", "trainable %", "optimizer state (B)", "adapter on disk (B)",
            "peak step tensors (B)", "peak step RSS (B)", "step (ms)"]
    if base is not None:
        head += [f"trainable / {baseline}", f"opt. state / {baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, f"{r.trainable:,}", f"{100 * r.trainable / r.total:.2f}", f"{r.optimizer_state_bytes:,}",
                 f"{r.adapter_bytes:,}", f"{r.peak_tensor_bytes:,}",
                 "n/a" if r.peak_rss_bytes is None else f"{r.peak_rss_bytes:,}", f"{1000 * r.step_seconds:.1f}"]
        if base is not None:
            cells += [f"{r.trainable / base.trainable:.2f}",
                      f"{r.optimizer_state_bytes / base.optimizer_state_bytes:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    sources = sorted({r.peak_source for r in rows})
    lines.append(f"\npeak step tensors: torch.profiler memory {'/'.join(sources)}; RSS: VmHWM (Linux), coarse.")
    return "\n".join(lines)
