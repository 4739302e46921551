"""Progress on every long wait (scoring, perplexity, serving, generation): a tqdm bar on stderr, which ZenML
keeps in the step log, with count, rate and ETA.

    for ids in progress(encoded, "perplexity model-Q8_0.gguf", "text"):
        ...

At most one line per EVERY_S seconds besides the first and the last, so a log of a 14-minute export
stays readable while a terminal still sees the bar move.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

EVERY_S = 10.0


def progress(iterable: Iterable | None = None, desc: str = "", unit: str = "it", total: int | None = None,
             disable: bool = False) -> tqdm:
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, mininterval=EVERY_S, file=sys.stderr,
                dynamic_ncols=True)
