"""Exact and near-duplicate detection for training texts (MinHash LSH through `datasketch`).

    from tuneline.data.dedup import exact_duplicates, near_duplicates, cross_duplicates
    exact_duplicates(texts)                      # {row: first earlier row with the same normalized text}
    near_duplicates(texts, threshold=0.8)       # {row: (earlier kept row, estimated Jaccard)}
    cross_duplicates(train_texts, eval_texts)    # {train row: (eval row, similarity)}: split leakage

    python bench/dedup.py --rows 20000           # speed against datasketch's plain per-row usage

Near-duplicates are scored on character 4-gram shingles (UTF-8 bytes) of the lowercased word tokens,
punctuation dropped. Measured with `python bench/dedup_shingles.py` (exact Jaccard; 2,000 of the 9,972
distinct Banking77 training messages against all, and 2,000 of 4,400 long HH-RLHF answers / GSM8K
questions), at Jaccard 0.8 char 4-grams separate short edited copies from different texts best among
word 1/2/3-grams and char 3/4/5/6-grams:
- one edit in a 15-24 word message keeps it >= 0.8: word replaced 89%, dropped 99%, neighbours
  swapped 99%, typo 100% (char 5-grams: 80/97/60/100%; word 3-grams: 12/12/3/12%);
- the nearest message of another intent label is >= 0.8 for 0.2% of messages, all one-word pairs with
  conflicting labels ("there is a payment i don t recognize" / "... recognise"); 3.8% have some
  neighbour >= 0.8, nearly all same-label one-word paraphrases ("since i got married i need to change
  my name" / "since i just got married ..."). Word 1-grams: 0.9% across labels; char 3-grams: 7% any;
- long texts stay apart: nearest-neighbour p99 0.28, none >= 0.8 (char 3-grams: p99 0.36).
Under ~10 words one edit changes too much of any shingle set to reach 0.8: that is a different message.

The sketches are bit-identical to datasketch's documented usage, `MinHash(num_perm, seed=seed)` with
`update(shingle)` per shingle (default SHA1 hash, "affine32" scheme), so they mix with sketches built
elsewhere; they are computed for all rows at once with numpy (SHA1 once per distinct shingle) and
indexed with datasketch's `MinHashLSH`. 100k bench rows on 2 busy cores: 15 s, against 208 s for
per-shingle `update()` and 42 s for `MinHash.bulk`, with the same rows flagged (bench/dedup.py); about
10 s of the 15 are MinHashLSH's own query/insert.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
from datasketch import LeanMinHash, MinHash, MinHashLSH

# Shingles permuted per block: a (num_perm x 8192) uint32 block (4 MB at 128) stays in cache.
_BLOCK_SHINGLES = 8192
# Windows packed per block when shingling.
_BLOCK_WINDOWS = 1 << 20
_WORD = re.compile(r"\w+")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
_SCHEME = "affine32"


def normalize_text(s: str) -> str:
    """The exact-duplicate key: lowercase, whitespace collapsed, punctuation stripped at both ends."""
    return _EDGE_PUNCT.sub("", " ".join(s.lower().split()))


def exact_duplicates(texts: list[str]) -> dict[int, int]:
    """Row -> the first earlier row with the same normalized text (first occurrences are not listed)."""
    first: dict[str, int] = {}
    dups = {}
    for i, text in enumerate(texts):
        j = first.setdefault(normalize_text(text), i)
        if j != i:
            dups[i] = j
    return dups


def shingle_text(s: str) -> bytes:
    """The bytes shingles are cut from: lowercased word tokens joined by single spaces."""
    # Word tokens only: punctuation and spacing differences are not evidence of a different text.
    return " ".join(_WORD.findall(s.lower())).encode("utf-8")


def _fmix32(h: np.ndarray) -> np.ndarray:
    # datasketch's affine32 pre-mix (MurmurHash3 finalizer); a test pins it to the library's output.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _sha1_32(chunks: Iterable[bytes]) -> np.ndarray:
    """datasketch's default `sha1_hash32` of each chunk, as a uint32 array."""
    return np.frombuffer(b"".join(hashlib.sha1(c).digest()[:4] for c in chunks), dtype="<u4").astype(np.uint32)


def shingle_hashes(texts: list[str], shingle: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's default hash (`sha1_hash32`) of every `shingle`-byte window of every normalized text.

    A text shorter than one shingle (empty included) is one shingle: the whole text. Returns
    (hashes uint32, starts int64 of len(texts) + 1); text i owns hashes[starts[i]:starts[i+1]].
    The windows are packed into uint64 keys with numpy and SHA1 runs once per distinct window in
    the whole input, not once per occurrence (100k bench rows: 19M windows, 48k distinct 4-grams).
    """
    if not 1 <= shingle <= 8:
        raise ValueError(f"shingle is 1-8 bytes, packed into one uint64 key (got {shingle}); 4 is the measured default")
    encoded = [shingle_text(t) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    counts = np.maximum(lengths - shingle + 1, 1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    text_at = np.cumsum(lengths) - lengths
    # Trailing NULs keep every window in bounds; short texts' windows are replaced below.
    buf = np.frombuffer(b"".join(encoded) + b"\0" * shingle, dtype=np.uint8)
    keys = np.empty(int(starts[-1]), dtype=np.uint64)
    i = 0
    while i < len(texts):  # rows in blocks of ~1M windows, to bound the int64 temporaries
        j = max(int(np.searchsorted(starts, starts[i] + _BLOCK_WINDOWS, side="right")) - 1, i + 1)
        row = np.repeat(np.arange(i, j), counts[i:j])
        pos = text_at[row] + np.arange(starts[i], starts[j]) - starts[row]
        key = np.zeros(len(pos), dtype=np.uint64)
        for k in range(shingle):  # big-endian bytes: the key is the window itself
            key <<= np.uint64(8)
            key |= buf[pos + k]
        keys[starts[i]:starts[j]] = key
        i = j
    short = lengths < shingle
    whole = ~np.repeat(short, counts)
    # Hash-based factorize (pandas): 1.2 s on the 19M keys of 100k bench rows; np.unique sorts, several x slower.
    codes, distinct = pd.factorize(keys[whole])
    raw = np.asarray(distinct, dtype=">u8").tobytes()
    hashes = np.empty(len(keys), dtype=np.uint32)
    hashes[whole] = _sha1_32(raw[o:o + shingle] for o in range(8 - shingle, len(raw), 8))[codes]
    hashes[starts[:-1][short]] = _sha1_32(encoded[k] for k in np.flatnonzero(short))
    return hashes, starts


def minhash_matrix(hashes: np.ndarray, starts: np.ndarray, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash values: min over each row's shingles of a_k * fmix32(h) + b_k mod 2^32.

    Equal to `MinHash(num_perm, seed=seed).hashvalues` (scheme "affine32") after updating with the same
    hashes; the permutations come from the library itself.
    """
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    a, b = a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None]
    mixed = _fmix32(hashes.astype(np.uint32, copy=False))
    rows = len(starts) - 1
    # Permutations x shingles, reduced along the contiguous axis into a reused block that stays in
    # cache: 10x faster than the (shingles, permutations) layout on 2 cores.
    out = np.empty((num_perm, rows), dtype=np.uint32)
    scratch = np.empty(num_perm * _BLOCK_SHINGLES, dtype=np.uint32)
    i = 0
    while i < rows:
        # As many whole rows as fit the block (at least one, however long).
        j = max(int(np.searchsorted(starts, starts[i] + _BLOCK_SHINGLES, side="right")) - 1, i + 1)
        m = int(starts[j] - starts[i])
        block = scratch[: num_perm * m].reshape(num_perm, m) if m <= _BLOCK_SHINGLES else None
        block = np.multiply(mixed[None, starts[i]:starts[j]], a, out=block)  # wraps mod 2^32, as intended
        block += b
        np.minimum.reduceat(block, starts[i:j] - starts[i], axis=1, out=out[:, i:j])
        i = j
    return np.ascontiguousarray(out.T)


def sketch(texts: list[str], num_perm: int = 128, shingle: int = 4, seed: int = 0) -> np.ndarray:
    """MinHash values of texts, one row each: `MinHash(num_perm, seed=seed).hashvalues` after
    `update(s)` for each shingle s of the text's normalized bytes."""
    return minhash_matrix(*shingle_hashes(texts, shingle), num_perm=num_perm, seed=seed)


def _lean(values: np.ndarray, seed: int) -> LeanMinHash:
    return LeanMinHash(seed=seed, hashvalues=values, scheme=_SCHEME)


def _best(values: np.ndarray, row: np.ndarray, candidates: list[int]) -> tuple[int, float]:
    """The candidate with the highest estimated Jaccard to `row` (lowest index on ties)."""
    candidates = sorted(candidates)
    sims = np.count_nonzero(values[candidates] == row, axis=1) / values.shape[1]
    k = int(np.argmax(sims))
    return candidates[k], float(sims[k])


def _check(threshold: float, num_perm: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a Jaccard similarity in (0, 1] (got {threshold})")
    if num_perm < 2:
        raise ValueError(f"num_perm must be >= 2 (got {num_perm}); 128 is a good default")


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band) for MinHashLSH: the longest bands that still make a pair at exactly
    `threshold` a candidate with probability >= recall.

    Candidates are confirmed by estimated Jaccard anyway, so a false candidate costs one vector
    compare while a missed one is a duplicate kept. datasketch's own optimiser weighs both equally and
    picks (8, 16) at 0.85: a pair at Jaccard 0.87 is then a candidate only 60% of the time. On 30k
    bench rows (16, 8) caught 82% of the planted copies at exact Jaccard >= 0.85 against 68% for (8, 16),
    for 2.4x the LSH time; shorter bands caught none more.
    """
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            return b, r
    return num_perm, 1


def near_duplicates(
    texts: list[str], threshold: float = 0.8, num_perm: int = 128, shingle: int = 4, seed: int = 0
) -> dict[int, tuple[int, float]]:
    """Row -> (earlier kept row it near-duplicates, estimated Jaccard), in input order.

    `shingle` is in UTF-8 bytes (characters, for ASCII text). Each row is queried before it is
    inserted and only kept rows are inserted, so a cluster keeps its first member and every other member
    points at a kept row (never at a dropped one). LSH candidates are confirmed with the estimated
    Jaccard >= threshold; the best one is reported. Exact duplicates are included (similarity 1.0).
    """
    _check(threshold, num_perm)
    values = sketch(texts, num_perm, shingle, seed)
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))
    dups: dict[int, tuple[int, float]] = {}
    for i, row in enumerate(values):
        m = _lean(row, seed)
        candidates = lsh.query(m)
        if candidates:
            j, sim = _best(values, row, candidates)
            if sim >= threshold:
                dups[i] = (j, sim)
                continue
        lsh.insert(i, m, check_duplication=False)
    return dups


def cross_duplicates(
    train_texts: list[str],
    other_texts: list[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 4,
    seed: int = 0,
) -> dict[int, tuple[int, float]]:
    """Train row -> (row of `other_texts`, similarity) for train rows that leak into the other split.

    Exact duplicates (same `normalize_text`) are reported with similarity 1.0 and the first such other
    row; near-duplicates with the best estimated Jaccard >= threshold.
    """
    _check(threshold, num_perm)
    first: dict[str, int] = {}
    for j, text in enumerate(other_texts):
        first.setdefault(normalize_text(text), j)
    leaks: dict[int, tuple[int, float]] = {}
    for i, text in enumerate(train_texts):
        j = first.get(normalize_text(text))
        if j is not None:
            leaks[i] = (j, 1.0)
    if not other_texts:
        return leaks
    values = sketch(list(other_texts) + list(train_texts), num_perm, shingle, seed)
    other, train = values[: len(other_texts)], values[len(other_texts):]
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))
    with lsh.insertion_session() as session:
        for j, row in enumerate(other):
            session.insert(j, _lean(row, seed), check_duplication=False)
    for i, row in enumerate(train):
        if i in leaks:
            continue
        candidates = lsh.query(_lean(row, seed))
        if candidates:
            j, sim = _best(other, row, candidates)
            if sim >= threshold:
                leaks[i] = (j, sim)
    return leaks
