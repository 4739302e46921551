"""Which shingles separate near-duplicates from different texts, short (Banking77) and long?

    python bench/dedup_shingles.py [--sample 2000] [--threshold 0.8]

Exact Jaccard (no MinHash) on `tuneline.data.dedup`'s normalized text (lowercased word tokens), for word
1/2/3-grams and character 3-6-grams:
  "different >= t": share of sampled messages whose nearest *other* distinct training message has
      Jaccard >= t (lower is better; Banking77 does contain real one-word paraphrases, so not 0);
  "nn p50/p90": that nearest-neighbour Jaccard's median and 90th percentile;
  "other label >= t": the same share for the nearest message of another intent label: surely a
      different message, so every hit is a false near-duplicate;
  "<edit> >= t": share of sampled 15-24 word messages still >= t after one edit (higher is better):
      a word replaced by a random vocabulary word, a word dropped, two neighbours swapped, a typo;
  "long p99 / >= t": nearest other text among 20+ word HH-RLHF answers and GSM8K questions
      (different texts, except a few rewritten GSM8K problems): 99th percentile, share >= t.
The choice in tuneline/data/dedup.py (char 4-grams) comes from this table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

from tuneline.data.dedup import shingle_text  # noqa: E402
from tuneline.paths import DATA_DIR  # noqa: E402

KINDS = [("word", 1), ("word", 2), ("word", 3), ("char", 3), ("char", 4), ("char", 5), ("char", 6)]
EDITS = ("replace", "drop", "swap", "typo")


def shingles(text: str, kind: str, n: int) -> set:
    if kind == "word":
        w = text.split()
        return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)} or {text}
    b = text.encode()
    return {b[i:i + n] for i in range(len(b) - n + 1)} or {b}


def edit(text: str, how: str, rng: random.Random, vocab: list[str]) -> str:
    w = text.split()
    i = rng.randrange(len(w) - 1)
    if how == "replace":
        w[i] = rng.choice(vocab)
    elif how == "drop":
        del w[i]
    elif how == "swap":
        w[i], w[i + 1] = w[i + 1], w[i]
    else:
        k = rng.randrange(len(w[i]))
        w[i] = w[i][:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + w[i][k + 1:]
    return " ".join(w)


def nearest(sets: list[set], sample: list[int], exclude=None) -> np.ndarray:
    """Exact Jaccard of each sampled set to its most similar other set (excluding pairs `exclude` marks)."""
    ids: dict = {}
    ind, ptr = [], [0]
    for s in sets:
        ind += [ids.setdefault(g, len(ids)) for g in s]
        ptr.append(len(ind))
    x = sp.csr_matrix((np.ones(len(ind), np.float32), ind, ptr), shape=(len(sets), len(ids)))
    size = np.asarray(x.sum(1)).ravel()
    inter = (x[sample] @ x.T).toarray()
    jac = inter / (size[sample][:, None] + size[None, :] - inter)
    jac[np.arange(len(sample)), sample] = 0  # not itself
    if exclude is not None:
        jac[exclude] = 0
    return jac.max(1)


def long_texts() -> list[str]:
    texts = []
    with open(DATA_DIR / "hh_rlhf" / "helpful-base_test.prompt_chosen_rejected.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["chosen"], row["rejected"]]
    with open(DATA_DIR / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["question"] for line in f if line.strip()]
    texts = dict.fromkeys(shingle_text(t).decode() for t in texts)
    return [t for t in texts if len(t.split()) >= 20]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with open(DATA_DIR / "banking77" / "train.csv", encoding="utf-8", newline="") as f:
        labelled = {shingle_text(r["text"]).decode(): r["category"] for r in csv.DictReader(f)}
    texts, labels = list(labelled), np.array(list(labelled.values()))
    rng = random.Random(args.seed)
    sample = rng.sample(range(len(texts)), min(args.sample, len(texts)))
    vocab = [w for t in texts for w in t.split()]
    mid = [i for i in sample if 15 <= len(texts[i].split()) < 25]
    long = long_texts()
    long_sample = rng.sample(range(len(long)), min(args.sample, len(long)))
    t = args.threshold
    print(f"{len(texts)} distinct messages, {len(sample)} sampled ({len(mid)} of 15-24 words); "
          f"{len(long)} long texts, {len(long_sample)} sampled; t = {t}")
    edits = " ".join(f"{e + ' >= t':>12}" for e in EDITS)
    print(f"{'shingle':8} {'different >= t':>15} {'nn p50/p90':>11} {'other label >= t':>17} {edits} "
          f"{'long p99 / >= t':>16}")
    for kind, n in KINDS:
        sets = [shingles(x, kind, n) for x in texts]
        nn = nearest(sets, sample)
        other = nearest(sets, sample, exclude=labels[sample][:, None] == labels[None, :])
        long_nn = nearest([shingles(x, kind, n) for x in long], long_sample)
        kept = []
        for how in EDITS:
            js = [len(sets[i] & (e := shingles(edit(texts[i], how, rng, vocab), kind, n))) / len(sets[i] | e)
                  for i in mid]
            kept.append(np.mean(np.array(js) >= t))
        p50, p90 = np.quantile(nn, [0.5, 0.9])
        edits = " ".join(f"{k:>12.2f}" for k in kept)
        print(f"{kind} {n:<3} {np.mean(nn >= t):>15.3f} {p50:>5.2f}/{p90:<5.2f} {np.mean(other >= t):>17.3f} {edits} "
              f"{np.quantile(long_nn, 0.99):>9.2f} / {np.mean(long_nn >= t):.3f}")


if __name__ == "__main__":
    main()
