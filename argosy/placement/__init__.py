"""Placement: filter -> score -> pick over catalog offerings, with an explanation for every choice.

Offerings are passed in (snapshot + cached live + what providers report now); nothing here fetches,
stores or remembers anything between calls.
"""

from __future__ import annotations

from argosy.placement.place import place, suggest_fixes
from argosy.placement.strategies import STRATEGIES, Strategy, get_strategy
from argosy.placement.types import Candidate, NoPlacementError, Placement, PlacementRequest, Rejection

__all__ = [
    "STRATEGIES",
    "Candidate",
    "NoPlacementError",
    "Placement",
    "PlacementRequest",
    "Rejection",
    "Strategy",
    "get_strategy",
    "place",
    "suggest_fixes",
]
