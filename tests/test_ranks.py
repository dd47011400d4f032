"""Log lines come from rank 0 only."""
import logging

from lightning_utilities.core.rank_zero import rank_zero_only

from sparsity_core.ranks import global_rank, log_rank_zero


def test_only_rank_zero_logs(caplog, monkeypatch):
    logger = logging.getLogger("sparsity_test_ranks")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    with caplog.at_level(logging.INFO, logger="sparsity_test_ranks"):
        log_rank_zero(logger, logging.INFO, "from %s", "rank one")
        assert global_rank() == 1 and not caplog.records
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        log_rank_zero(logger, logging.INFO, "from %s", "rank zero")
    assert [r.getMessage() for r in caplog.records] == ["from rank zero"]


def test_without_lightning_the_launcher_environment_says_the_rank(monkeypatch):
    monkeypatch.delattr(rank_zero_only, "rank", raising=False)
    monkeypatch.setenv("RANK", "3")
    assert global_rank() == 3
