"""The stream's training batches: every example by default, full batches with ``drop_last``."""
import pytest
import torch
from sparsity_plugins.continual.sampler import FullBatches, KeptSampler

from .helpers import stream


def test_full_batches_drop_the_partial_tail_unless_it_is_the_only_batch():
    ordered = lambda n: KeptSampler(n, lambda: None, shuffle=False)  # noqa: E731
    assert list(FullBatches(ordered(10), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(FullBatches(ordered(10), 4)) == 2
    assert list(FullBatches(ordered(8), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(FullBatches(ordered(8), 4)) == 2
    assert list(FullBatches(ordered(3), 4)) == [[0, 1, 2]] and len(FullBatches(ordered(3), 4)) == 1
    kept = torch.tensor([True, False, True, True, False, True, True])  # DDR's mask: 5 kept
    assert list(FullBatches(KeptSampler(7, lambda: kept, shuffle=False), 2)) == [[0, 2], [3, 5]]
    with pytest.raises(ValueError):
        FullBatches(ordered(3), 0)


def test_stream_drop_last_yields_full_batches_and_a_reshuffled_tail_each_epoch():
    keep_all, full = stream(batch_size=10), stream(batch_size=10)  # 48 training examples per task
    full.drop_last = True
    assert [len(b[0]) for b in keep_all.train_dataloader()] == [10, 10, 10, 10, 8]
    loader = full.train_dataloader()
    assert [len(b[0]) for b in loader] == [10, 10, 10, 10] and len(loader) == 4
    assert (keep_all.batches_per_epoch(), full.batches_per_epoch()) == (5, 4)
    seen = []
    for epoch in (0, 1):
        loader.batch_sampler.sampler.set_epoch(epoch)
        seen.append({int(p) for _, _, pos in loader for p in pos})
    assert len(seen[0]) == len(seen[1]) == 40 and seen[0] != seen[1]  # a different 8 left out


def test_lightning_sets_the_epoch_of_the_sampler_under_full_batches():
    from .helpers import module, trainer

    data = stream(batch_size=10)
    data.drop_last = True
    loaders = []
    original = data.train_dataloader
    data.train_dataloader = lambda: loaders.append(original()) or loaders[-1]
    trainer(max_epochs=3).fit(module(), datamodule=data)
    assert loaders and loaders[-1].batch_sampler.sampler.epoch == 2
