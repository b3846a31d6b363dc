"""Rows of the PCKD paper's tables that this project cannot rerun, and why: ``pckd report`` lists them under the
table of their dataset, so a reader never mistakes a missing row for a forgotten run, nor another method's
numbers for the paper's row (a run's row is always the name of the method it ran)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """A row of the paper's tables that is not reproducible here."""

    label: str  # the paper's row label
    tables: str  # where it appears
    dataset: str  # data.name of those tables
    reason: str
    citation: str
    not_this: str = ""  # a project method that must not be read as this row

    def note(self) -> str:
        """One line for the report."""
        line = (f"paper row {self.label} ({self.tables}): not reproducible, {self.reason} ({self.citation})")
        return line + (f"; {self.not_this}" if self.not_this else "")


NOT_REPRODUCIBLE: tuple[PaperRow, ...] = (
    PaperRow("LSKD [30]", "Tables I and II", "cifar100", "no public code or equations",
             "Li, Cheng and Han, \"Boosting Knowledge Distillation via Intra-Class Logit Distribution Smoothing\", "
             "IEEE TCSVT 2024",
             "the `ls` row is another method (Sun et al.'s logit standardisation, CVPR 2024)"),
)


def not_reproducible_notes(dataset: str) -> list[str]:
    """Notes for a table of ``dataset`` (its label: data.name plus any slicing)."""
    name = dataset.split(" (")[0]
    return [row.note() for row in NOT_REPRODUCIBLE if row.dataset == name]
