import copy

import pytest
import torch
from torch import nn

from sparsity_core.calibration import ResidualBlock, ResidualPlan, StreamNorm, bert_plan, slice_gpt, vit_plan

timm = pytest.importorskip("timm")


def tiny_vit(dtype=torch.float32, seed=0):
    """A pre-LN transformer: timm ViT, 8x8 images, patch 4 (4 tokens + class token), width 32,
    2 blocks, with LayerNorm scales/shifts and embeddings made non-trivial (random init leaves
    γ = 1, β = 0, which would hide a wrong fold)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2,
                              num_heads=2, mlp_ratio=2.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
        model.pos_embed.normal_(0.0, 0.5)
        model.cls_token.normal_(0.0, 0.5)
    return model.eval().to(dtype)


def images(n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 8, 8, generator=g).to(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pre_ln_outputs_are_identical_at_zero_slicing(dtype):
    model = tiny_vit(dtype)
    dense = copy.deepcopy(model)
    batches = images(dtype=dtype)
    result = slice_gpt(model, batches, 0.0)
    assert result.width == result.sliced == 32 and result.explained["stream"] == pytest.approx(1.0)
    x = images(1, dtype)[0] * 2.0  # not the calibration data
    assert (model(x) - dense(x)).abs().max() < 1e-5
    assert isinstance(model.blocks[0].norm1, StreamNorm) and isinstance(model.norm, StreamNorm)


def test_pre_ln_shapes_shrink_at_25_percent():
    model = tiny_vit()
    dense = copy.deepcopy(model)
    result = slice_gpt(model, images(), 0.25)
    assert result.sliced == 24 and result.params_after < result.params_before
    b = model.blocks[1]
    assert (b.attn.qkv.in_features, b.attn.proj.out_features, b.mlp.fc1.in_features, b.mlp.fc2.out_features) == (
        24, 24, 24, 24)
    assert b.attn.qkv.out_features == 96 and b.mlp.fc1.out_features == 64  # inner widths unchanged
    assert model.patch_embed.proj.out_channels == 24 and model.pos_embed.shape == (1, 5, 24)
    assert model.cls_token.shape == (1, 1, 24) and model.head.in_features == 24
    x = images(1)[0]
    out = model(x)
    assert out.shape == dense(x).shape == (16, 5)
    assert torch.nn.functional.cosine_similarity(out, dense(x)).mean() > 0.5


def test_layer_scale_is_folded():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=8, patch_size=4, num_classes=3, embed_dim=16, depth=1, num_heads=2,
                              init_values=0.3).eval()
    dense = copy.deepcopy(model)
    slice_gpt(model, images(), 0.0)
    assert isinstance(model.blocks[0].ls1, nn.Identity)
    x = images(1)[0]
    assert (model(x) - dense(x)).abs().max() < 1e-5


class _Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


class _Out(nn.Module):  # BERT's SelfOutput / Output: LayerNorm(dense(h) + residual)
    def __init__(self, d_in, d):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(d_in, d), nn.LayerNorm(d)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class _Layer(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self, self.attention.output = _Attention(d), _Out(d, d)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, inner)
        self.output = _Out(inner, d)

    def forward(self, x):
        x = self.attention.output(self.attention.self(x), x)
        return self.output(torch.nn.functional.gelu(self.intermediate.dense(x)), x)


class TinyBert(nn.Module):
    """A post-LN encoder with Hugging Face BERT's module names (so ``bert_plan`` applies):
    word + position embeddings, LayerNorm, 2 layers of LN(x + attention(x)), LN(x + MLP(x))."""

    def __init__(self, vocab=50, d=32, inner=64, positions=16, layers=2):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, d)
        self.embeddings.position_embeddings = nn.Embedding(positions, d)
        self.embeddings.LayerNorm = nn.LayerNorm(d)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(d, inner) for _ in range(layers))

    def forward(self, input_ids):
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(input_ids) + e.position_embeddings(torch.arange(input_ids.shape[1])))
        for layer in self.encoder.layer:
            x = layer(x)
        return x


def bert(dtype=torch.float32):
    torch.manual_seed(0)
    model = TinyBert().eval().to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(2)
    batches = [{"input_ids": torch.randint(0, 50, (8, 16), generator=g)} for _ in range(4)]
    return model, batches


def test_post_ln_is_invariant_at_zero_and_keeps_its_output_width_when_sliced():
    model, batches = bert()
    assert bert_plan(model).embed_norm == "embeddings.LayerNorm" and len(bert_plan(model).blocks) == 4
    dense = copy.deepcopy(model)
    result = slice_gpt(model, batches, 0.0)
    assert result.passes == 5  # embeddings + one per segment (4 branches)
    x = torch.randint(0, 50, (3, 11))
    assert (model(x) - dense(x)).abs().max() < 1e-5
    model = copy.deepcopy(dense)
    slice_gpt(model, batches, 0.25)
    layer = model.encoder.layer[0]
    assert model.embeddings.word_embeddings.embedding_dim == 24
    assert layer.attention.self.query.in_features == 24 and layer.output.dense.out_features == 24
    assert layer.intermediate.dense.out_features == 64
    assert model(x).shape == (3, 11, 32)  # the last norm maps back to the full width
    assert torch.nn.functional.cosine_similarity(model(x), dense(x), dim=-1).mean() > 0.9


def test_bad_calibration_leaves_the_model_untouched():
    model = tiny_vit()
    dense = copy.deepcopy(model)
    qkv = model.blocks[0].attn.qkv
    x = images(1)[0]
    with pytest.raises(ValueError, match="25 calibration rows .* fewer than the 32 principal components"):
        slice_gpt(model, [torch.randn(1, 3, 8, 8)], 0.0, min_samples=1)  # 1 image: 5 tokens x 5 norms
    with pytest.raises(ValueError, match="NaN/Inf"):
        slice_gpt(model, [torch.full((16, 3, 8, 8), float("nan"))], 0.25)
    with pytest.raises(ValueError, match=r"shapes \(16, 2, 8, 8\)\) does not fit the model"):
        slice_gpt(model, [torch.randn(16, 2, 8, 8)], 0.25)
    with pytest.raises(ValueError, match="at least 8 are needed"):
        slice_gpt(model, [torch.randn(2, 3, 8, 8)], 0.25)
    assert model.blocks[0].attn.qkv is qkv and torch.equal(model(x), dense(x))
    model, batches = bert()
    dense = copy.deepcopy(model)
    batches[1] = {"input_ids": torch.full((8, 40), 3)}  # longer than the position table: fails mid-way
    with pytest.raises(ValueError, match="does not fit the model"):
        slice_gpt(model, batches, 0.25)
    x = torch.randint(0, 50, (2, 9))
    assert torch.equal(model(x), dense(x))
    word, calls = model.embeddings.word_embeddings, []

    def fails_in_the_third_pass(m, batch):
        calls.append(1)
        if len(calls) > 8:  # 4 batches per pass: the embeddings and the first segment are already sliced
            raise RuntimeError("out of memory")
        return m(**batch)

    batches[1] = batches[0]
    with pytest.raises(ValueError, match="out of memory"):
        slice_gpt(model, batches, 0.25, forward=fails_in_the_third_pass)
    assert model.embeddings.word_embeddings is word and isinstance(model.encoder.layer[0].attention.output.LayerNorm,
                                                                   nn.LayerNorm)
    assert torch.equal(model(x), dense(x))
    assert isinstance(model.embeddings.LayerNorm, nn.LayerNorm)


def test_plans_are_checked():
    model = tiny_vit()
    plan = vit_plan(model)
    with pytest.raises(ValueError, match="slicing must be a number"):
        slice_gpt(model, images(), 1.0)
    bad = ResidualPlan("post", plan.embeddings, plan.blocks)
    with pytest.raises(ValueError, match="needs embed_norm"):
        slice_gpt(model, images(), 0.25, plan=bad)
    bad = ResidualPlan("pre", plan.embeddings, [ResidualBlock(["blocks.0.attn.proj"], "blocks.0.attn.qkv",
                                                              "blocks.0.norm1")], final_norm="norm")
    with pytest.raises(ValueError, match="writer 'blocks.0.attn.qkv' must be an nn.Linear with 32 outputs"):
        slice_gpt(model, images(), 0.25, plan=bad)
    bad = ResidualPlan("side", plan.embeddings, plan.blocks)
    with pytest.raises(ValueError, match="plan.norm must be one of"):
        slice_gpt(model, images(), 0.25, plan=bad)
