"""Near-duplicate dedup speed: tuneline.data.dedup vs datasketch's plain per-row usage, same rows, one process.

    python bench/dedup.py                 # 100k rows (baseline takes minutes on 2 CPU cores)
    python bench/dedup.py --rows 10000    # quick
    python bench/dedup.py --rows 100000 --skip-plain   # ours (and the bulk variant) only

Rows come from the shipped data: Banking77 train+test messages, HH-RLHF answers (chosen and rejected)
and GSM8K questions, exact duplicates removed. Once those run out, a fresh row joins two texts of similar
length (so fresh rows overlap each other partly, as real data does). With probability --dup-rate a row
is instead a planted near-duplicate: an earlier row with 1 + words // 25 edits (word drop, adjacent
swap, one-character typo, word replaced). All methods use the same shingles (character 4-grams of
`tuneline.data.dedup.shingle_text`), the same LSH bands (`tuneline.data.dedup.lsh_params`) and the same algorithm
(query each row, confirm candidates by estimated Jaccard >= threshold, insert only kept rows); they
differ in how the MinHashes are built:
  plain: `MinHash(num_perm)` per row and `update()` per shingle (datasketch's documented usage, SHA1)
  bulk:  `MinHash.bulk(shingle lists)` (datasketch's batch API: `update_batch` per row, SHA1)
  ours:  `tuneline.data.dedup.near_duplicates` (numpy over all rows' shingles, SHA1 once per distinct one)
Our sketches are bit-identical to the library's, so the bench asserts that every method flags the same
rows against the same kept rows with the same similarity. "recall" counts the planted copies whose exact
shingle Jaccard to their source is >= threshold that were flagged (the rest are lost to MinHash noise
near the threshold, or their source was itself dropped).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

from tuneline.paths import DATA_DIR  # noqa: E402


def source_texts() -> list[str]:
    """Distinct (by normalized text) real texts from the shipped data, in a fixed order."""
    from tuneline.data.dedup import normalize_text

    texts = []
    for split in ("train", "test"):
        with open(DATA_DIR / "banking77" / f"{split}.csv", encoding="utf-8", newline="") as f:
            texts += [r["text"] for r in csv.DictReader(f)]
    for path in sorted((DATA_DIR / "hh_rlhf").glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts += [row["chosen"], row["rejected"]]
    with open(DATA_DIR / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["question"] for line in f if line.strip()]
    seen, out = set(), []
    for t in texts:
        key = normalize_text(t)
        if key and key not in seen:
            seen.add(key)
            out.append(t.strip())
    return out


def perturb(text: str, rng: random.Random, vocab: list[str]) -> str:
    """1 + words // 25 random edits: drop a word, swap two neighbours, a typo, or replace a word."""
    words = text.split()
    for _ in range(1 + len(words) // 25):
        if len(words) < 3:
            break
        i = rng.randrange(len(words) - 1)
        edit = rng.choice(("drop", "swap", "typo", "replace"))
        if edit == "drop":
            del words[i]
        elif edit == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        elif edit == "typo" and len(words[i]) > 1:
            k = rng.randrange(len(words[i]))
            words[i] = words[i][:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + words[i][k + 1:]
        else:
            words[i] = rng.choice(vocab)
    return " ".join(words)


def make_rows(n: int, dup_rate: float, seed: int) -> tuple[list[str], dict[int, int]]:
    """n rows and the planted near-duplicates {row: the earlier row it was copied from}."""
    rng = random.Random(seed)
    pool = source_texts()
    rng.shuffle(pool)
    by_length = sorted(pool, key=len)
    vocab = [w for t in pool[:2000] for w in t.split()]
    rows, planted, fresh = [], {}, iter(pool)
    for i in range(n):
        if rows and rng.random() < dup_rate:
            j = rng.randrange(len(rows))
            rows.append(perturb(rows[j], rng, vocab))
            planted[i] = j
            continue
        text = next(fresh, None)
        if text is None:  # pool used up: two texts of similar length joined
            k = rng.randrange(len(by_length) - 1)
            text = by_length[k] + " " + by_length[min(len(by_length) - 1, k + rng.randint(1, 200))]
        rows.append(text)
    return rows, planted


def exact_jaccard(a: str, b: str, shingle: int) -> float:
    from tuneline.data.dedup import shingle_text

    def grams(t):
        s = shingle_text(t)
        return {s[i:i + shingle] for i in range(len(s) - shingle + 1)} or {s}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def library_dedup(texts: list[str], threshold: float, num_perm: int, shingle: int, seed: int, bulk: bool):
    """The same query-then-insert dedup with MinHashes built by datasketch itself (SHA1 per shingle)."""
    from datasketch import MinHash, MinHashLSH

    from tuneline.data.dedup import lsh_params, shingle_text

    def grams(t):
        s = shingle_text(t)
        return {s[i:i + shingle] for i in range(len(s) - shingle + 1)} or {s}

    if bulk:
        sketches = iter(MinHash.generator((grams(t) for t in texts), num_perm=num_perm, seed=seed))
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))  # the same bands as ours
    kept, dups = {}, {}
    for i, text in enumerate(texts):
        if bulk:
            m = next(sketches)
        else:
            m = MinHash(num_perm=num_perm, seed=seed)
            for g in grams(text):
                m.update(g)
        best = max(((m.jaccard(kept[j]), -j) for j in lsh.query(m)), default=(0.0, 0))
        if best[0] >= threshold:
            dups[i] = (-best[1], best[0])
        else:
            lsh.insert(i, m, check_duplication=False)
            kept[i] = m
    return dups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dup-rate", type=float, default=0.2, help="share of rows that are planted near-dups")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle", type=int, default=4, help="characters (UTF-8 bytes) per shingle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="skip the slow per-shingle update() baseline")
    parser.add_argument("--skip-bulk", action="store_true", help="skip datasketch's MinHash.bulk variant")
    args = parser.parse_args(argv)

    from tuneline.data.dedup import near_duplicates, shingle_hashes

    rows, planted = make_rows(args.rows, args.dup_rate, args.seed)
    t0 = time.perf_counter()
    n_shingles = len(shingle_hashes(rows, args.shingle)[0])
    print(f"{len(rows)} rows ({len(planted)} planted near-dups), {n_shingles / len(rows):.0f} shingles/row, "
          f"{sum(map(len, rows)) / len(rows):.0f} chars/row; shingling alone {time.perf_counter() - t0:.1f}s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    known = {i for i, j in planted.items() if exact_jaccard(rows[i], rows[j], args.shingle) >= args.threshold}

    kw = dict(threshold=args.threshold, num_perm=args.num_perm, shingle=args.shingle, seed=args.seed)
    runs = {}
    for name, enabled, fn in (
        ("ours: tuneline.data.dedup.near_duplicates", True, lambda: near_duplicates(rows, **kw)),
        ("bulk: datasketch MinHash.bulk", not args.skip_bulk, lambda: library_dedup(rows, **kw, bulk=True)),
        ("plain: datasketch MinHash.update", not args.skip_plain, lambda: library_dedup(rows, **kw, bulk=False)),
    ):
        if enabled:
            t0 = time.perf_counter()
            dups = fn()
            runs[name] = (time.perf_counter() - t0, dups)
            print(f"  done: {name}: {runs[name][0]:.1f}s", flush=True)

    print(f"\nload average now {os.getloadavg()[0]:.1f}; threshold {args.threshold}, num_perm {args.num_perm}, "
          f"char {args.shingle}-grams; {len(known)} planted copies have exact Jaccard >= threshold")
    print(f"{'method':38} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'flagged':>8} {'recall':>7}")
    for name, (seconds, dups) in runs.items():
        recall = len(known & dups.keys()) / max(1, len(known))
        print(f"{name:38} {len(rows):>7} {seconds:>8.1f} {len(rows) / seconds:>8.0f} {len(dups):>8} {recall:>7.3f}")
    ours_s, ours = next(iter(runs.values()))
    for name, (_, dups) in runs.items():
        assert dups == ours, f"{name} flagged different rows than ours: the sketches should be bit-identical"
    for name, (seconds, dups) in list(runs.items())[1:]:
        both, either = len(ours.keys() & dups.keys()), len(ours.keys() | dups.keys())
        same_target = sum(ours[i][0] == dups[i][0] for i in ours.keys() & dups.keys())
        print(f"vs {name.split(':')[0]}: time ours/baseline {ours_s / seconds:.3f} ({seconds / ours_s:.1f}x faster); "
              f"flagged by both {both} of either {either} ({both / max(1, either):.3f}), "
              f"same kept row for {same_target} of {both}")


if __name__ == "__main__":
    main()
