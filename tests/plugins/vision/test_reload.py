"""Loading a pruned model safely: a fresh instance, the recorded removal, tensors only."""
import json
import pickle

import pytest
import torch

from sparsity_plugins.vision import apply_pruning_record, load_pruned, optimize_for_inference, save_pruned
from sparsity_plugins.vision.removal import remove_channels

from .models import example, tiny
from .test_groups_removal import build


def pruned(name):
    model, groups, ctrl, opt = build(name)
    ctrl.enforcement.remove_hooks()
    record = remove_channels(groups, ctrl.masks, [opt])
    return model.eval(), record


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_a_fresh_model_rebuilt_from_the_record_holds_the_saved_model_exactly(tmp_path, name):
    model, record = pruned(name)
    x = example(2)
    with torch.no_grad():
        ref = model(x)
    save_pruned(model, tmp_path)
    loaded = load_pruned(tmp_path, tiny(name), example())
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


def test_a_folded_export_is_rebuilt_with_its_batchnorms_folded(tmp_path):
    model, _ = pruned("resnet")
    fast, info = optimize_for_inference(model, example(2), memory_format="contiguous")
    save_pruned(fast, tmp_path, info)
    loaded = load_pruned(tmp_path, tiny("resnet"), example())
    x = example(2)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


class _Payload:
    """Unpickling this runs ``os.system``-like code: here it only writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_with_a_code_payload_is_refused(tmp_path):
    model, _ = pruned("resnet")
    save_pruned(model, tmp_path)
    marker = tmp_path / "payload_ran"
    torch.save({"conv1.weight": _Payload(str(marker))}, tmp_path / "state_dict.pt")  # a tampered tensor file
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        load_pruned(tmp_path, tiny("resnet"), example())
    with pytest.raises(ValueError, match="trust_pickle"):
        load_pruned(tmp_path)  # the pickled module is never read without trust_pickle
    assert not marker.exists()


def test_records_that_do_not_fit_the_model_are_refused_before_any_change(tmp_path):
    model, record = pruned("resnet")
    fresh = tiny("resnet")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    bad = record.to_json()
    bad["kept"] = {"no.such.group": [0]}
    with pytest.raises(ValueError, match="groups this model does not have"):
        apply_pruning_record(fresh, bad, example())
    name = next(iter(record.kept))
    bad["kept"] = {name: [10_000]}
    with pytest.raises(ValueError, match="keeps channel 10000"):
        apply_pruning_record(fresh, bad, example())
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    save_pruned(model, tmp_path)
    with pytest.raises(ValueError, match="needs `example`"):
        load_pruned(tmp_path, tiny("resnet"))
    with pytest.raises(ValueError, match="groups this model does not have"):  # another architecture
        load_pruned(tmp_path, tiny("convnext"), example())
    meta = json.loads((tmp_path / "pruning.json").read_text())
    assert meta["record"]["kept"] == record.kept
    (tmp_path / "pruning.json").write_text(json.dumps({**meta, "record": None}))  # the record lost
    with pytest.raises(ValueError, match="do not fit"):
        load_pruned(tmp_path, tiny("resnet"), example())
    with pytest.raises(ValueError, match="pruning.json"):
        load_pruned(tmp_path / "elsewhere", tiny("resnet"), example())
