"""Tiny timm models (random weights, few channels) and a LightningModule around one."""
import pytorch_lightning as pl
import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm", reason="the vision extra (timm) is not installed")
pytest.importorskip("torch_pruning", reason="the vision extra (torch-pruning) is not installed")


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "resnet":
        return timm.create_model("resnet10t", pretrained=False, num_classes=4)
    if name == "convnext":
        return timm.create_model("convnext_atto", pretrained=False, num_classes=4, dims=(16, 24, 32, 40),
                                 depths=(1, 1, 2, 1))
    if name == "vit":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8,
                                 embed_dim=32, depth=2, num_heads=4)
    if name == "densenet":
        return timm.create_model("densenet121", pretrained=False, num_classes=4, growth_rate=8,
                                 block_config=(2, 2), stem_type="")
    raise KeyError(name)


def example(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomize_norms(model: nn.Module) -> None:
    """Non-trivial BatchNorm/LayerNorm affine and running statistics (fresh ones are 1/0)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


class TimmModule(pl.LightningModule):
    def __init__(self, name: str = "resnet", lr: float = 1e-3):
        super().__init__()
        self.model = tiny(name)
        self.lr = lr
        self.example_input_array = example(2)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def image_loader(n: int = 16, batch_size: int = 4):
    from torch.utils.data import DataLoader, TensorDataset
    g = torch.Generator().manual_seed(3)
    return DataLoader(TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)),
                      batch_size=batch_size, shuffle=False)
