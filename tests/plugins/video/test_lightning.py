"""The search under the one integration point: SparsityCallback attaches it, leaves its
denoising clock alone, and checkpoints its plain state."""
import pytorch_lightning as pl
import torch

from sparsity_core import SparsityCallback
from sparsity_plugins.video.search import PatternSearch

from ...lightning.helpers import trainer
from .helpers import model_and_inputs


class Holder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.transformer, self.inputs = model_and_inputs("wan")
        self.head = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        with torch.no_grad():
            out = self.transformer(**self.inputs)[0]
        return self.head(out.mean((2, 3, 4))).sum() + 0 * batch[0].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def test_search_program_under_the_callback():
    search = PatternSearch(block_size=16, error_budget=0.5, measure=False, transformer="transformer")
    callback = SparsityCallback(programs=[search])
    model = Holder()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2, 1)), batch_size=1)
    trainer(max_steps=2, callbacks=[callback]).fit(model, data)
    assert search.steps == 0  # the callback does not step a denoising-clock program
    assert search.err is not None and search.err.shape[1:3] == (2, 2)
    state = callback.state_dict()
    assert torch.equal(state["programs"][search.name]["err"], search.err)
    plan = search.finalize()
    assert plan.model == "WanTransformer3DModel" and not model.transformer._forward_pre_hooks
