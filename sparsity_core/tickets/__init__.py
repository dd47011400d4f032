"""Lottery tickets found at initialization: Concrete Ticket Search (Arora & Teuscher, 2025).

IMP with rewinding lives in the core (``Iterative(rewind_step=...)`` + the controller); this
package adds CTS in the same vocabulary: a concrete relaxation of the mask
(:mod:`.concrete`), GradBalance sparsity control (:mod:`.gradbalance`), the reverse-KL search
(:mod:`.search`), the ``"concrete"`` criterion and the ``"cts"`` program (:mod:`.program`).
"""
from .concrete import ConcreteScores, binary_concrete, expected_density
from .gradbalance import GradBalance
from .program import ConcreteTicketSearch
from .search import concrete_ticket_search, reverse_kl, search_report

__all__ = ["ConcreteScores", "ConcreteTicketSearch", "GradBalance", "binary_concrete", "concrete_ticket_search",
           "expected_density", "reverse_kl", "search_report"]
