import pytest
import torch

pytest.importorskip("diffusers")

from sparsity_plugins.video.tiny import tiny_inputs, tiny_model


def model_and_inputs(kind, **kw):
    if kind == "hunyuan":
        kw.setdefault("layers", 1)  # one double-stream + one single-stream block: two attention layers
    kw.setdefault("head_dim", 16 if kind in ("cogvideox", "hunyuan") else 8)
    model = tiny_model(kind, **kw)
    return model, tiny_inputs(model)


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]
