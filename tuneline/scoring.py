"""Pure scoring functions for task answers (no models, no I/O)."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")


def normalize_label(text: str) -> str:
    """First line of a generated answer, lower-cased, spaces and trailing punctuation dropped."""
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    return _SPACE.sub(" ", line).strip().strip(".").strip().lower()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_label(prediction) == normalize_label(reference))
