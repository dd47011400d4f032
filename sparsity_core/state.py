"""The default state of a component: none."""
from __future__ import annotations

from typing import Dict


class NoState:
    """A component that keeps no state: its ``state_dict`` is empty, and loading a state
    with keys is an error (it was saved by another component)."""

    def state_dict(self) -> Dict[str, object]:
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")
