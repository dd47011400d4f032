"""Memory accounting: trainable parameters, optimizer state after a real step, bytes on disk,
peak step memory, one table; peft's LoRA as the baseline where peft is installed."""
import torch

from sparsity_plugins.peft import AdapterConfig, PeftLoRA, compare_memory, memory_table, peft_available

from .models import MLP


def loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def test_one_table_with_the_peft_baseline():
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
    methods = {"full": "full",
               "lora": AdapterConfig("lora", r"fc\d", "head", {"r": 2}),
               "snell": AdapterConfig("snell", r"fc\d", "head", {"r": 2, "sparsity": 0.5, "checkpoint": True}),
               "pst": AdapterConfig("pst", r"fc\d", "head", {"r": 1, "r_score": 1, "sparsity": 0.5})}
    if peft_available():
        methods["lora (peft)"] = PeftLoRA(r=2, target_modules=r"fc\d", modules_to_save=["head"])
    rows = {r.method: r for r in compare_memory(MLP, batch, loss, methods)}
    lora_trainable = 2 * (6 + 8) + 2 * (8 + 8) + (8 * 3 + 3)
    assert rows["full"].trainable == rows["full"].total == sum(p.numel() for p in MLP().parameters())
    assert rows["lora"].trainable == rows["snell"].trainable == lora_trainable
    assert rows["pst"].trainable == (8 + 6) + (8 + 6) + (8 + 6) + (8 + 8) * 3 + 27
    # AdamW after one step: two float32 moments per trainable entry and a float32 step per tensor
    assert rows["lora"].optimizer_state_bytes == 8 * lora_trainable + 4 * 6
    assert rows["full"].optimizer_state_bytes > rows["lora"].optimizer_state_bytes
    for r in rows.values():
        assert r.adapter_bytes > 0 and r.peak_tensor_bytes > 0 and r.step_seconds > 0
        assert r.peak_source in ("timeline", "ops")
    if "lora (peft)" in rows:
        peft_row = rows["lora (peft)"]
        assert peft_row.trainable == rows["lora"].trainable
        assert peft_row.optimizer_state_bytes == rows["lora"].optimizer_state_bytes
    table = memory_table(list(rows.values()), baseline="lora (peft)" if "lora (peft)" in rows else "lora")
    assert table.count("\n| ") == len(rows) and "optimizer state (B)" in table and "snell" in table
