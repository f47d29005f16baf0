"""The published numbers each experiment is compared with: one table, read by `hrm-slurm collect`'s report.

Values are fractions (0.55 = 55%). `metric` is what the number measures: `exact_accuracy` (the whole puzzle
right, per test puzzle) or `pass@2` (ARC: a task counts when every test input has the right output among the
two answers ranked first after voting over the augmented versions). `kind` names the column of the report:
the paper, an independent reproduction of the reference code, or ARC Prize's verification. Keep
guides/EXPERIMENTS.md and README.md's experiments table in step with this table.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "Wang et al. 2025, The Hierarchical Reasoning Model, arXiv 2506.21734"
PAPER_URL = "https://arxiv.org/abs/2506.21734"
ARC_PRIZE = "ARC Prize, The Hidden Drivers of HRM's Performance on ARC-AGI (15 Aug 2025), semi-private set"
ARC_PRIZE_URL = "https://arcprize.org/blog/hrm-analysis"

KINDS = ("paper", "reproduction", "ARC Prize")  # the report's columns, in this order


@dataclass(frozen=True)
class Published:
    experiment: str
    metric: str  # exact_accuracy | pass@2
    value: float  # a fraction
    kind: str  # one of KINDS
    source: str
    url: str


PUBLISHED: tuple[Published, ...] = (
    Published("sudoku_full", "exact_accuracy", 0.550, "paper", PAPER + ", Figure 1 (Sudoku-Extreme)", PAPER_URL),
    Published("sudoku_full", "exact_accuracy", 0.458, "reproduction",
              "HigherOrderCO, the reference code on 1 H200 in about an hour (sapientinc/HRM issue 12)",
              "https://github.com/sapientinc/HRM/issues/12"),
    Published("maze", "exact_accuracy", 0.745, "paper", PAPER + " (Maze-Hard 30x30)", PAPER_URL),
    Published("arc1", "pass@2", 0.403, "paper", PAPER + " (ARC-AGI-1 public evaluation set)", PAPER_URL),
    Published("arc1", "pass@2", 0.32, "ARC Prize", ARC_PRIZE, ARC_PRIZE_URL),
    Published("arc2", "pass@2", 0.050, "paper", PAPER + " (ARC-AGI-2 public evaluation set)", PAPER_URL),
    Published("arc2", "pass@2", 0.02, "ARC Prize", ARC_PRIZE, ARC_PRIZE_URL),
)


def published_for(experiment: str | None) -> list[Published]:
    """The published numbers of an experiment, in the order of KINDS ([] for none or an unknown one)."""
    rows = [p for p in PUBLISHED if p.experiment == experiment]
    return sorted(rows, key=lambda p: KINDS.index(p.kind))


def metric_for(experiment: str | None) -> str | None:
    """The metric the experiment's published numbers measure (None when nothing is published for it)."""
    rows = published_for(experiment)
    return rows[0].metric if rows else None
