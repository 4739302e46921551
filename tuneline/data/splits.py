"""Which checked rows go where: stratified splits, label balance, the general mix, the preference pairs.

    tuneline validate configs/default.yaml          # data.rows_per_label, train_rows, eval_rows, mining_rows, balance.*
    taken, rest = stratified(rows, per_label=16, total=None, rng=random.Random(0))

Every function draws from the one `rng` of the run (data.seed) in a fixed order, so a config gives the
same splits every time.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

from tuneline.config import DataConfig, PreferenceData
from tuneline.data import dedup
from tuneline.data.checks import Ledger, chat, key_text, token_lengths
from tuneline.data.readers import DataError
from tuneline.data.records import to_preference
from tuneline.data.sources import Source, read_source


def class_of(r: dict) -> str | None:
    """The row's label, or its `category` column where it has one (non-classification data)."""
    return r.get("label") or (r.get("raw") or {}).get("category")


def stratified(rows: list[dict], per_label: int | None, total: int | None, rng: random.Random) -> tuple[list, list]:
    """Take `per_label` rows of each class (or `total` rows round-robin over classes); return (taken, rest)."""
    by_label: dict[str, list] = defaultdict(list)
    for r in rows:
        by_label[str(class_of(r))].append(r)
    for group in by_label.values():
        rng.shuffle(group)
    taken: list = []
    if per_label is not None:
        for label in sorted(by_label):
            taken += by_label[label][:per_label]
    else:
        depth = 0
        while len(taken) < (total or 0) and any(len(g) > depth for g in by_label.values()):
            for label in sorted(by_label):
                if depth < len(by_label[label]) and len(taken) < total:
                    taken.append(by_label[label][depth])
            depth += 1
    ids = {id(r) for r in taken}
    return taken, [r for r in rows if id(r) not in ids]


def training_sample(rows: list[dict], cfg: DataConfig, shape: str, rng: random.Random) -> tuple[list, list] | None:
    """(sample, rest) when the config samples the training rows (rows_per_label on classification data,
    train_rows on any shape); None when every row trains."""
    if cfg.rows_per_label and shape == "classification":
        return stratified(rows, cfg.rows_per_label, None, rng)
    if cfg.train_rows:
        return stratified(rows, None, cfg.train_rows, rng)
    return None


def balance_stats(recs: list[dict]) -> dict:
    counts = Counter(c for c in map(class_of, recs) if c is not None)
    if not counts:
        return {}
    n, k = sum(counts.values()), len(counts)
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    return {"classes": k, "rows": n, "min": min(counts.values()), "max": max(counts.values()),
            "max_min_ratio": round(max(counts.values()) / min(counts.values()), 3),
            "normalized_entropy": round(entropy / math.log(k), 4) if k > 1 else 1.0,
            "counts": dict(sorted(counts.items()))}


def rebalance(recs: list[dict], cfg: DataConfig, ledger: Ledger, rng: random.Random) -> list[dict]:
    """cap: drop rows beyond `balance.cap` per class (quarantined); upsample: repeat up to `balance.floor`."""
    b = cfg.balance
    by_class: dict = defaultdict(list)
    for r in recs:
        by_class[class_of(r)].append(r)
    if b.policy == "cap" and b.cap:
        out = []
        for cls, group in by_class.items():
            out += group[: b.cap]
            for r in group[b.cap:]:
                ledger.add(r, "balance_cap", "label",
                           f"class {cls!r} has {len(group)} rows > data.balance.cap={b.cap}", "dropped")
        return out
    if b.policy == "upsample" and b.floor:
        extra = []
        for group in by_class.values():
            for k in range(max(0, b.floor - len(group))):
                extra.append({**rng.choice(group), "upsampled": k + 1})
        return recs + extra
    return recs


def general_mix(cfg: DataConfig, source: Source, n_task: int, tokenizer, rng: random.Random) -> tuple[list[dict], dict]:
    """`fraction` of the final training set drawn from a general instruction set, with its provenance.

    Its rows are not task input: they are not in the row accounting, only in these counts.
    """
    mix = cfg.general_mix
    dropped: list = []
    read = read_source(source, dropped, shape=mix.shape, columns=mix.columns, template=cfg.prompt_template,
                       system_prompt=cfg.system_prompt, key="data.general_mix")
    lengths = token_lengths([chat(r) for r in read.records], tokenizer)
    fits = [r for r, n in zip(read.records, lengths) if cfg.min_tokens <= n <= cfg.max_tokens]
    want = round(n_task * mix.fraction / (1 - mix.fraction))
    if want > len(fits):
        raise DataError(f"{mix.file}: {len(fits)} rows fit data.max_tokens, {want} needed for "
                        f"data.general_mix.fraction={mix.fraction}; lower the fraction, raise max_tokens or use a "
                        f"larger file")
    rng.shuffle(fits)
    for r in fits:
        r["label"] = None
    return fits[:want], {"general_mix_file": mix.file, "general_mix_shape": read.shape,
                         "general_mix_rows_in": read.rows_in,
                         "general_mix_unusable": len(dropped) + len(read.records) - len(fits)}


def preference_pairs(pref: PreferenceData, cfg: DataConfig, source: Source,
                     ledger: Ledger) -> tuple[list[dict], dict]:
    """The user's preference pairs (data.preference), read and quarantined like the training data; the
    `rows` shortest are used. A pair whose chosen equals its rejected (exactly, or after normalization) is
    dropped as identical_pair; the stats count every pair and give the length bias of those DPO gets."""
    dropped: list = []
    read = read_source(source, dropped, shape=pref.shape, columns=pref.columns, template=cfg.prompt_template,
                       system_prompt=cfg.system_prompt, key="data.preference")
    ledger.add_read_rejects(dropped)
    if read.shape not in ("preference", "hh_preference"):
        raise DataError(f"{pref.file}: its rows are {read.shape}, and data.preference needs preference pairs "
                        "(prompt/chosen/rejected, or HH-RLHF chosen/rejected transcripts). Point data.preference.file "
                        "at a pair file, or map its columns, e.g. data.preference.columns: "
                        "{question: prompt, response_j: chosen, response_k: rejected}")
    kept = []
    for r in read.records:
        if dedup.normalize_text(r["chosen"]) == dedup.normalize_text(r["rejected"]):
            ledger.add(r, "identical_pair", "chosen", "chosen == rejected after normalization", "dropped")
        else:
            kept.append(r)
    kept.sort(key=lambda r: len(key_text(r)) + len(r["chosen"]) + len(r["rejected"]))
    used = kept[: pref.rows]
    rejected = len(dropped) + len(read.records) - len(kept)
    stats = {"pairs_in": read.rows_in, "pairs_rejected": rejected,
             "identical_pairs": sum(d["reason"] == "identical_pair" for d in dropped) + len(read.records) - len(kept),
             "pairs_used": len(used), "pairs_unused": len(kept) - len(used), **length_bias(used)}
    assert stats["pairs_used"] + stats["pairs_unused"] + rejected == read.rows_in, f"pair accounting broke: {stats}"
    return [to_preference(r) for r in used], stats


def length_bias(pairs: list[dict]) -> dict:
    """DPO's length bias in these pairs: the share where chosen is longer than rejected, and the mean lengths
    (characters). A share far from 0.5 teaches 'longer (or shorter) is better' along with the preference."""
    n = max(len(pairs), 1)
    return {"chosen_longer_share": round(sum(len(r["chosen"]) > len(r["rejected"]) for r in pairs) / n, 3),
            "chosen_mean_chars": round(sum(len(r["chosen"]) for r in pairs) / n, 1),
            "rejected_mean_chars": round(sum(len(r["rejected"]) for r in pairs) / n, 1)}
