"""Rebuild the two derived files of this folder from the shipped HH-RLHF transcripts (deterministic, no network).

    .venv/bin/python data/hh_chat/make.py

conversations.jsonl: multi-turn chats (`messages` shape) from the `chosen` transcripts of source rows 0-1199;
pairs_stackexchange_style.jsonl: single-question pairs from source rows 1200-1899, with the columns a
StackExchange-style preference set has (question, response_j preferred over response_k). Rows 1900 onward are
never used: the general-text perplexity check (evaluate.perplexity) reads the last texts of the same source.
"""

import gzip
import json
from pathlib import Path

from tuneline.data.shapes import hh_prompt_messages as turns  # the reader's own transcript split

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "hh_rlhf" / "helpful-base_test.jsonl.gz"
CHAT_ROWS, PAIR_ROWS = range(1200), range(1200, 1900)
MAX_CHARS = 900  # whole transcript: about 250 tokens, so that most chats fit data.max_tokens 320 with the template


def well_formed(msgs: list[dict]) -> bool:
    """user/assistant alternating from a user turn, ending with a non-empty assistant answer."""
    return (len(msgs) >= 2 and all(m["content"] for m in msgs) and msgs[-1]["role"] == "assistant"
            and all(m["role"] == ("user", "assistant")[i % 2] for i, m in enumerate(msgs)))


def main() -> None:
    rows = [json.loads(line) for line in gzip.decompress(SOURCE.read_bytes()).decode("utf-8").splitlines()]
    chats, pairs = [], []
    for i in CHAT_ROWS:
        msgs = turns(rows[i]["chosen"])
        if well_formed(msgs) and len(msgs) >= 4 and len(rows[i]["chosen"]) <= MAX_CHARS:  # two user turns or more
            chats.append({"id": f"helpful-base_test:{i}", "messages": msgs})
    for i in PAIR_ROWS:
        chosen, rejected = turns(rows[i]["chosen"]), turns(rows[i]["rejected"])
        if not (well_formed(chosen) and well_formed(rejected) and len(chosen) == len(rejected) == 2):
            continue  # one question, one answer each: what a StackExchange-style set holds
        if chosen[0] != rejected[0] or chosen[1] == rejected[1] or len(rows[i]["chosen"]) > MAX_CHARS:
            continue
        pairs.append({"qid": f"helpful-base_test:{i}", "question": chosen[0]["content"],
                      "response_j": chosen[1]["content"], "response_k": rejected[1]["content"]})
    for name, items in (("conversations.jsonl", chats), ("pairs_stackexchange_style.jsonl", pairs)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        print(f"{name}: {len(items)} rows")


if __name__ == "__main__":
    main()
