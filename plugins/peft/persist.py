"""Adapter-only files: the tensors of the adapters (and ``modules_to_save``) plus a JSON config.

A directory holds ``adapter_config.json`` and either ``adapter_model.safetensors`` (when
``safetensors`` is installed) or ``adapter_model.pt`` (``torch.save`` of a plain
``{key: tensor}``, read back with ``torch.load(..., weights_only=True)``). Keys are those of
the adapted model's state dict (``<layer>.adapter.<tensor>``, ``<saved module>.<tensor>``).
The JSON records the method, its parameters and every adapted layer's ``[out, in]``, so
:func:`load_adapters` checks a model completely (layers present, Linear, same shapes; the
file's tensors exactly the adapters' keys and shapes) before it changes anything.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from torch import nn

from ._deps import safetensors_torch
from .matching import adaptable
from .model import AdapterConfig, AdapterSet, build_adapters

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
TORCH_FILE = "adapter_model.pt"
FORMAT = "sparsity-suite-adapter"
VERSION = 1


def save_adapters(adapters: AdapterSet, directory: str, format: str = "auto") -> Dict[str, str]:  # noqa: A002
    """Write ``adapters`` to ``directory``; ``format``: ``"auto"`` (safetensors if installed),
    ``"safetensors"`` or ``"torch"``. Returns the paths written."""
    if format not in ("auto", "safetensors", "torch"):
        raise ValueError(f"format must be 'auto', 'safetensors' or 'torch', got {format!r}")
    st = safetensors_torch()
    if format == "safetensors" and st is None:
        raise ImportError("format='safetensors' needs the safetensors package: pip install safetensors")
    use_st = st is not None and format != "torch"
    state = {k: v.contiguous().cpu() for k, v in adapters.adapter_state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "config": adapters.config.to_dict(),
            "resolved_params": {n: a.config() for n, a in adapters.adapters.items()},
            "layers": {n: [a.out_features, a.in_features] for n, a in adapters.adapters.items()},
            "modules_to_save": sorted(adapters.saved_modules)}
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"the adapter config is not plain JSON data: {err}") from None
    os.makedirs(directory, exist_ok=True)
    tensors = os.path.join(directory, SAFETENSORS_FILE if use_st else TORCH_FILE)
    for stale in (SAFETENSORS_FILE, TORCH_FILE):
        path = os.path.join(directory, stale)
        if path != tensors and os.path.exists(path):
            os.remove(path)
    if use_st:
        st.save_file(state, tensors, metadata={"format": FORMAT})
    else:
        torch.save(state, tensors)
    config = os.path.join(directory, CONFIG_FILE)
    with open(config, "w", encoding="utf-8") as f:
        f.write(text)
    return {"config": config, "tensors": tensors}


def read_adapter_files(directory: str) -> tuple:
    """``(metadata, {key: tensor})`` of a saved adapter directory (no model involved)."""
    config = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config):
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory!r}")
    with open(config, encoding="utf-8") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config!r} is not valid JSON ({err}): not a {FORMAT} config") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{config!r} is not a {FORMAT} v{VERSION} config")
    st_path, pt_path = os.path.join(directory, SAFETENSORS_FILE), os.path.join(directory, TORCH_FILE)
    if os.path.isfile(st_path):
        st = safetensors_torch()
        if st is None:
            raise ImportError(f"{st_path!r} needs the safetensors package to be read: pip install safetensors")
        state = st.load_file(st_path)
    elif os.path.isfile(pt_path):
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"no {SAFETENSORS_FILE} or {TORCH_FILE} in {directory!r}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"the adapter tensors in {directory!r} are not a plain {{key: tensor}} mapping")
    return meta, state


def _check_layers(model: nn.Module, layers: Dict[str, list]) -> None:
    modules = dict(model.named_modules())
    problems = []
    for name, shape in layers.items():
        module = modules.get(name)
        if module is None:
            problems.append(f"{name!r} is not a module of this model")
            continue
        ok, why = adaptable(module)
        if not ok:
            problems.append(f"{name!r} is {why}")
        elif [module.out_features, module.in_features] != list(shape):
            problems.append(f"{name!r} is [out, in] = {[module.out_features, module.in_features]} here but "
                            f"{list(shape)} in the saved adapter")
    if problems:
        raise ValueError("the saved adapter does not fit this model: " + "; ".join(problems[:6]))


def load_adapters(model: nn.Module, directory: str, adapters: Optional[AdapterSet] = None) -> AdapterSet:
    """Adapters saved in ``directory``, put into ``model`` (or loaded into ``adapters``, already
    injected with the same configuration). Everything is checked first: on a mismatch
    (missing layer, other shapes, other keys) ``ValueError`` and the model is unchanged."""
    meta, state = read_adapter_files(directory)
    config = AdapterConfig.from_dict(meta["config"])
    if adapters is not None:
        if adapters.model is not model:
            raise ValueError("adapters= belongs to another model")
        if adapters.config.to_dict() != config.to_dict():
            raise ValueError(f"the saved adapter's config {config.to_dict()} differs from the injected one "
                             f"{adapters.config.to_dict()}")
        adapters.load_adapter_state_dict(state)
        return adapters
    _check_layers(model, meta.get("layers", {}))
    built, saved = build_adapters(model, config, init=False)
    if sorted(built) != sorted(meta.get("layers", {})):
        raise ValueError(f"the saved adapter covers layers {sorted(meta.get('layers', {}))[:6]} but its patterns "
                         f"match {sorted(built)[:6]} in this model")
    expected = {f"{n}.adapter.{k}": tuple(v.shape) for n, (_, a) in built.items() for k, v in a.state_dict().items()}
    expected.update({f"{n}.{k}": tuple(v.shape) for n, m in saved.items() for k, v in m.state_dict().items()})
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [f"{k}: saved {tuple(state[k].shape)}, model {expected[k]}" for k in expected
           if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or bad:
        raise ValueError(f"the saved adapter does not fit this model: missing {missing[:6]}, unexpected "
                         f"{extra[:6]}, shapes {bad[:6]}")
    result = AdapterSet.attach(model, config, built, saved)
    try:
        result.load_adapter_state_dict(state)
    except Exception:
        result.remove()
        raise
    return result
