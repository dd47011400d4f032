"""Continual-learning metrics from the accuracy matrix (Lopez-Paz & Ranzato, 2017, "Gradient
Episodic Memory"; Chaudhry et al., 2018, "Riemannian Walk").

R[i][j] is the test accuracy on task j after training task i (j <= i). After T tasks:

- average accuracy   A = (1/T) Σ_j R[T−1][j]
- forgetting         F = (1/(T−1)) Σ_{j<T−1} ( max_{i<T−1} R[i][j] − R[T−1][j] )
- backward transfer  BWT = (1/(T−1)) Σ_{j<T−1} ( R[T−1][j] − R[j][j] )

F and BWT are 0 with a single task. Rows are plain lists of floats (a checkpoint's state).
"""
from __future__ import annotations

from typing import Dict, List, Sequence


class AccuracyMatrix:
    def __init__(self) -> None:
        self.rows: List[List[float]] = []

    def add(self, accuracies: Sequence[float]) -> None:
        """The accuracies on tasks 0..i after training task i (i = the number of rows so far)."""
        if len(accuracies) != len(self.rows) + 1:
            raise ValueError(f"row {len(self.rows)} needs {len(self.rows) + 1} accuracies, got {len(accuracies)}")
        self.rows.append([float(a) for a in accuracies])

    @property
    def tasks(self) -> int:
        return len(self.rows)

    def average_accuracy(self) -> float:
        return sum(self.rows[-1]) / len(self.rows[-1]) if self.rows else 0.0

    def forgetting(self) -> float:
        t = self.tasks
        if t < 2:
            return 0.0
        drops = [max(self.rows[i][j] for i in range(j, t - 1)) - self.rows[-1][j] for j in range(t - 1)]
        return sum(drops) / (t - 1)

    def backward_transfer(self) -> float:
        t = self.tasks
        if t < 2:
            return 0.0
        return sum(self.rows[-1][j] - self.rows[j][j] for j in range(t - 1)) / (t - 1)

    def summary(self) -> Dict[str, float]:
        return {"average_accuracy": self.average_accuracy(), "forgetting": self.forgetting(),
                "backward_transfer": self.backward_transfer()}

    def format(self) -> str:
        """The matrix as text, in percent (row i: after task i)."""
        head = "after \\ on " + " ".join(f"{'T' + str(j):>6}" for j in range(self.tasks))
        lines = [head] + [f"task {i:<6}" + " ".join(f"{100 * a:6.2f}" for a in row) for i, row in enumerate(self.rows)]
        return "\n".join(lines)

    def state_dict(self) -> Dict[str, List[List[float]]]:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state: Dict[str, List[List[float]]]) -> None:
        rows = state.get("rows")
        if not isinstance(rows, list) or any(len(r) != i + 1 for i, r in enumerate(rows)):
            raise ValueError(f"not an AccuracyMatrix state: {state!r}")
        self.rows = [[float(a) for a in r] for r in rows]
