"""The export gate's perplexity in looks against every text, on a run's GGUF files, in one process.

    python bench/perplexity_looks.py GGUF_DIR MERGED_REFERENCE_JSON [--limit default=0.05 F16=0.005 ...]

GGUF_DIR: the `files/` dir of a run's gguf_export artifact. MERGED_REFERENCE_JSON: the score_merged step's
MergedReference (`data_v2.json` of its merged_reference artifact): its per-text NLLs and token ids. Both are in
the local ZenML store of any default run, under `export_gguf/gguf_export/...` and `score_merged/merged_reference/...`.

For each `model-*.gguf`, alternately: every text scored through `gguf_scorer` (what the gate did before), and
`gate.judge_perplexity` (looks of 20 texts, stopping once the rise is surely over the type's limit). It prints
both times, their ratio, the texts scored, and whether the verdict on perplexity is the same. The limits are
the default config's (export.max_perplexity_increase).

Measured 2026-12-04 on the default run's files (2-core CPU): see docs/results/2026-12-04-default-run-perplexity-looks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`

DEFAULT_LIMITS = {"*": 0.05, "F32": 0.005, "F16": 0.005, "BF16": 0.005, "Q8_0": 0.005}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf_dir", type=Path)
    parser.add_argument("reference", type=Path)
    args = parser.parse_args(argv)

    from tuneline.eval.perplexity import gguf_scorer
    from tuneline.export.gate import Gate, judge_perplexity
    from tuneline.export.records import ExportFile, MergedReference

    merged = MergedReference.model_validate(json.loads(args.reference.read_text()))
    ids = merged.ppl_ids
    tokens = [len(i) - 1 for i in ids]
    looks = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, reference_ppl=merged.perplexity.ppl,
                 reference_nll=merged.perplexity.per_item, max_ppl_increase=DEFAULT_LIMITS)
    every = looks.model_copy(update={"reference_nll": []})  # a gate without per-text NLLs scores every text

    print(f"{len(ids)} texts, {sum(tokens)} scored tokens; merged perplexity {merged.perplexity.ppl:.3f}")
    print(f"{'file':10} {'all s':>7} {'looks s':>8} {'ratio':>6} {'texts':>6} {'rise (all)':>11} {'rise (looks)':>13} "
          f"{'bound':>8}  same verdict")
    total = [0.0, 0.0]
    for path in sorted(args.gguf_dir.glob("model-*.gguf")):
        qtype = path.stem.removeprefix("model-")
        runs = {}
        for name, gate in (("all", every), ("looks", looks)):
            entry = ExportFile(format="gguf", qtype=qtype, path=str(path))
            start = time.perf_counter()
            with gguf_scorer(path, ids) as score:
                judge_perplexity(entry, score, tokens, gate)
            runs[name] = (entry, time.perf_counter() - start)
        (full, t_all), (early, t_looks) = runs["all"], runs["looks"]
        total[0] += t_all
        total[1] += t_looks
        same = looks.ppl_rejects(full) == looks.ppl_rejects(early)
        bound = f"{early.perplexity_bound:+.2%}" if early.perplexity_bound is not None else "-"
        print(f"{qtype:10} {t_all:7.1f} {t_looks:8.1f} {t_looks / t_all:5.2f}x {len(early.nll_per_item):6d} "
              f"{full.perplexity_increase:+10.2%} {early.perplexity_increase:+12.2%} {bound:>8}  {'yes' if same else 'NO'}")
    print(f"{'all files':10} {total[0]:7.1f} {total[1]:8.1f} {total[1] / total[0]:5.2f}x")


if __name__ == "__main__":
    main()
