"""The task families, named once: the kinds of challenge a validator sends, the kinds of request a gateway's
``auto`` router tells apart and learns each model's accuracy on, and what ``/api/quality`` reports by.

A validator grades the ``GRADED`` families (each has one right answer) and hands the counts to gateways
(``protocol.records.FamilyScore``); the ``OPEN`` ones it sends but cannot grade. Both sides import these
names, and each checks its own tables against them when it is imported: a family renamed on one side and
not the other fails at once, not as a model that silently never gets graded.
"""

from __future__ import annotations

from typing import Collection

GRADED = ("arithmetic", "reverse_string", "sort_numbers", "count_letter", "json_format", "uppercase", "multi_turn")
OPEN = ("open_prompt", "question", "rewrite", "code", "conversation")
FAMILIES = GRADED + OPEN


def check_families(names: Collection[str], where: str, every: bool = True) -> None:
    """ValueError unless ``names`` are families (all of them, with ``every``): for a table keyed by family."""
    unknown, missing = set(names) - set(FAMILIES), set(FAMILIES) - set(names) if every else set()
    if unknown or missing:
        raise ValueError(f"{where}: not task families {sorted(unknown)}, missing {sorted(missing)} (protocol.families names them)")
