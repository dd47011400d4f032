"""Text data sets the PEFT recipe and benchmarks read from a local copy (nothing downloaded)."""
from __future__ import annotations

import csv
import os
import random
from typing import List, Tuple, Union


def read_sst2(text_root: Union[str, os.PathLike], split: str, limit: int = 0,
              seed: int = 0) -> Tuple[List[str], List[int]]:
    """SST-2 (GLUE) ``train`` or ``dev`` sentences and 0/1 labels from
    ``<text_root>/sst2/<split>.tsv`` (columns ``sentence``, ``label``); ``limit`` > 0 takes a
    seeded random subset of that many rows."""
    if split not in ("train", "dev"):
        raise ValueError(f"SST-2 split must be 'train' or 'dev', got {split!r}")
    path = os.path.join(text_root, "sst2", f"{split}.tsv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"SST-2 not found at {path}")
    with open(path, encoding="utf-8") as f:
        rows = [(r["sentence"].strip(), int(r["label"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return [r[0] for r in rows], [r[1] for r in rows]
