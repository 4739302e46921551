"""How many new tokens every generation of a run may produce: data.max_new_tokens, resolved once from the data.

    tuneline validate configs/examples/generation.yaml     # the data report shows the length and why
    length = generation_length(answers, tokenizer, cfg.max_new_tokens, cfg.max_new_tokens_cap, closed_set=False)
    carry(task_data, length); carried_length(task_data)    # what DPO mining, the evaluation and the exports use

`auto` follows the gold answers, tokenized with the run's tokenizer: their 95th percentile (classification:
the longest label, since a cut label is always wrong and labels are few and short), plus one token for the
stop token the model must also generate, plus a margin (10 %, at least 2 tokens: an answer tokenizes a little
differently after the chat template), capped at data.max_new_tokens_cap. A number is used as given.

The data step resolves it and carries it on the task_data table (`DataFrame.attrs`, stored in its Parquet file)
so every later step generates the same number of tokens; the validation summary and report show it.
"""

from __future__ import annotations

import math

import pandas as pd
from pydantic import BaseModel

from tuneline.data.readers import DataError

PERCENTILE = 95  # of the gold answers' lengths; classification uses 100 (every label fits)
MARGIN = 0.1  # share of the percentile's length added on top (at least MIN_MARGIN tokens)
MIN_MARGIN = 2
ATTR = "max_new_tokens"  # the task_data attrs key


class GenerationLength(BaseModel):
    """The resolved data.max_new_tokens and how it was found."""

    tokens: int
    setting: str  # "auto", or the configured number
    answers: int = 0  # gold answers measured
    percentile: int | None = None  # auto: which percentile of their token lengths
    answer_tokens: int | None = None  # auto: that percentile's length in tokens
    longest: int = 0  # the longest gold answer, in tokens
    cut: int = 0  # gold answers (plus their stop token) longer than `tokens`: their generations are cut
    capped: bool = False  # auto hit data.max_new_tokens_cap

    def reason(self) -> str:
        cut = (f"; {self.cut} of {self.answers} gold answers are longer (with the stop token) and would be cut"
               if self.cut else "")
        if self.setting != "auto":
            return f"{self.tokens} tokens: data.max_new_tokens={self.setting}{cut}"
        which = "the longest label" if self.percentile == 100 else f"p{self.percentile} of the gold answers"
        head = (f"{self.tokens} tokens: auto = {which} ({self.answer_tokens} tokens over {self.answers} answers, "
                f"longest {self.longest}) + 1 stop token + margin")
        return head + (", capped at data.max_new_tokens_cap" if self.capped else "") + cut


def nearest_rank(values: list[int], percentile: int) -> int:
    """The percentile by the nearest-rank method: a value that occurs in the data."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percentile / 100 * len(ordered)) - 1)]


def generation_length(answers: list[str], tokenizer, setting: int | str, cap: int,
                      closed_set: bool) -> GenerationLength:
    """data.max_new_tokens for these gold answers (`closed_set`: classification labels)."""
    lengths = [len(ids) for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]] if answers else []
    longest = max(lengths, default=0)
    if setting != "auto":
        tokens = int(setting)
        return GenerationLength(tokens=tokens, setting=str(setting), answers=len(lengths), longest=longest,
                                cut=sum(n + 1 > tokens for n in lengths))
    if not lengths:  # nothing to measure (the gate stops a run without eval rows): the cap
        return GenerationLength(tokens=cap, setting="auto", capped=True)
    percentile = 100 if closed_set else PERCENTILE
    p = nearest_rank(lengths, percentile)
    wanted = p + 1 + max(MIN_MARGIN, math.ceil(MARGIN * p))
    tokens = min(wanted, cap)
    return GenerationLength(tokens=tokens, setting="auto", answers=len(lengths), percentile=percentile,
                            answer_tokens=p, longest=longest, cut=sum(n + 1 > tokens for n in lengths),
                            capped=wanted > cap)


def carry(task: pd.DataFrame, length: GenerationLength) -> None:
    """Put the length on the task table: later steps read it with `carried_length`."""
    task.attrs[ATTR] = length.model_dump()


def carried_length(task: pd.DataFrame) -> int:
    """The generation length the data step resolved for this task table."""
    found = task.attrs.get(ATTR)
    if not found:
        raise DataError("the task data carries no generation length (data.max_new_tokens): it was not made by this "
                        "version's data step. Re-run the data validation (`tuneline validate`, or the pipeline "
                        "without the cache for validate_data)")
    return GenerationLength.model_validate(found).tokens
