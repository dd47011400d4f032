"""Tiny models for the peft plugin's tests: a two-block timm ViT and a two-layer BERT encoder
(random weights, no download), and an MLP."""
import torch
from torch import nn


def tiny_vit(num_classes: int = 3) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                             num_classes=num_classes).eval()


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertModel(config).eval()


class MLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 8, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


VIT_LAYERS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc\d)"
BERT_LAYERS = r"encoder\.layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)|intermediate\.dense|output\.dense)"


def vit_input(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def bert_input(n: int = 2, length: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 40, (n, length), generator=g),
            "attention_mask": torch.ones(n, length, dtype=torch.long)}


def lit_mlp(weight_decay: float = 0.01):
    """The MLP as a LightningModule: cross-entropy loss, AdamW (lr 0.05, ``weight_decay``) over
    the parameters that require gradients."""
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = MLP()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.05,
                                     weight_decay=weight_decay)

    return Module()
