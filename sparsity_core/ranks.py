"""Messages from one process only: under DDP every rank runs the same code, and a log line
per rank is noise. Lightning sets ``rank_zero_only.rank`` (lightning_utilities) to the global
rank; without Lightning the ``RANK`` / ``LOCAL_RANK`` environment variables of
``torch.distributed`` launchers say it."""
from __future__ import annotations

import logging
import os

from lightning_utilities.core.rank_zero import rank_zero_only


def global_rank() -> int:
    rank = getattr(rank_zero_only, "rank", None)
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    return int(rank)


def log_rank_zero(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """``logger.log(level, msg, *args)`` on rank 0 only."""
    if global_rank() == 0:
        logger.log(level, msg, *args)
