"""Property-based tests (hypothesis) of the allocators, schedules, N:M masks, the splat
budgeted strategy and the graph edge sparsifiers (issue 19, item 3).

Every property runs derandomized and without an example database, so CI sees the same
examples on every run; example counts keep the whole folder to about a minute of CPU.
"""
from hypothesis import HealthCheck, settings


def prop_settings(max_examples: int, **kwargs) -> settings:
    """Reproducible settings: fixed examples (derandomize), no database, no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **kwargs)
