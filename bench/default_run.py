"""Per-step wall time and the headline figures of one pipeline run, optionally against an earlier one.

    .venv/bin/python bench/default_run.py --run                       # runs configs/default.yaml, then reports
    .venv/bin/python bench/default_run.py                             # reports the newest run in the ZenML store
    .venv/bin/python bench/default_run.py --run-id ID --json out.json # one run, saved for a later comparison
    .venv/bin/python bench/default_run.py --compare before.json       # ratios against a saved run
    .venv/bin/python bench/default_run.py --run-id ID --paired other.json   # final vs final, item by item

--paired compares the final candidates of two runs on the same held-out rows (say mined-mistakes DPO against
GRPO on the task metric, after the same cached SFT): paired bootstrap CIs (`tuneline.eval.stats`) of the task
metric, MMLU and the general-text NLL per text, items matched by id.

Reports each step's wall time and its share of the run, whether it was cached, SFT tokens/s where the
step recorded it, the evaluation's items/s per scoring pass, and the evaluation summary (task score per
candidate, MMLU/GSM8K, perplexity) plus each export file's verdict, so a before/after pair shows both the time and that the numbers did not move.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = (("export_gguf", "gguf_export"), ("export_gptq", "gptq_export"), ("export_awq", "awq_export"))


def _seconds(step) -> float | None:
    start, end = step.start_time, step.end_time
    return (end - start).total_seconds() if start and end else None


def _exports(run) -> dict[str, dict]:
    out = {}
    for step, artifact in EXPORTS:
        if step not in run.steps or artifact not in run.steps[step].outputs:
            continue
        for f in run.steps[step].outputs[artifact][0].load().files:
            out[f.candidate] = {"passed": f.passed, "score": round(f.score, 4) if f.asked else None, "reason": f.reason}
    return out


def collect(run_id: str | None) -> dict:
    from zenml.client import Client

    client = Client()
    run = client.get_pipeline_run(run_id) if run_id else client.list_pipeline_runs(
        sort_by="desc:created", size=1, hydrate=True)[0]
    steps = {name: {"seconds": _seconds(s), "status": str(s.status)} for name, s in run.steps.items()}
    total = sum(s["seconds"] or 0 for s in steps.values())
    sft = run.steps.get("train_sft")
    summary, speed, items = {}, {}, {}
    if "promote" in run.steps and "final_evaluation" in run.steps["promote"].outputs:
        final = run.steps["promote"].outputs["final_evaluation"][0].load()
        summary, speed, items = final.summary(), throughput(final), final_items(final)
    return {
        "run": str(run.id), "status": str(run.status), "steps": steps, "steps_total_s": total,
        "wall_s": (run.end_time - run.start_time).total_seconds() if run.end_time and run.start_time else None,
        "sft_tokens_per_s": sft.run_metadata.get("tokens_per_second") if sft else None,  # TrainResult.metrics
        "evaluation": summary, "throughput": speed, "exports": _exports(run), "final_items": items,
    }


def final_items(report) -> dict[str, dict[str, float]]:
    """The final candidate's score per item, by id: the task rows, each benchmark, each general text's NLL."""
    final = report.final
    scored = report.forgetting_on or final  # the merged model, when it was measured for the final one
    out = {"task": dict(zip(report.task[final].item_ids, report.task[final].per_item))}
    for name, r in report.benchmarks.get(scored, {}).items():
        out[name] = dict(zip(r.item_ids, r.per_item))
    if scored in report.perplexity:
        out["nll"] = {str(i): x for i, x in enumerate(report.perplexity[scored].per_item)}
    return out


def paired(now: dict, other: dict) -> None:
    """This run's final candidate against another run's, item by item (same ids), with a paired bootstrap CI."""
    from tuneline.eval.stats import paired_bootstrap

    print(f"paired: run {now['run'][:8]} final vs run {other['run'][:8]} final (this minus that; nll: lower is better)")
    for name, mine in now["final_items"].items():
        theirs = other.get("final_items", {}).get(name, {})
        ids = sorted(set(mine) & set(theirs))
        if not ids:
            print(f"  {name:<6} no common items")
            continue
        d = paired_bootstrap([mine[i] for i in ids], [theirs[i] for i in ids])
        print(f"  {name:<6} n={d.n:<4} {d.mean_candidate:.4f} vs {d.mean_base:.4f}: {d.diff:+.4f} "
              f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}] p={d.p_value:.3f}")


def throughput(report) -> dict[str, float]:
    """Items/s of each scoring pass the report timed: task rows per candidate, general-text tokens per
    candidate (and a benchmark's items where its result carries seconds)."""
    out = {f"task {c} rows/s": r.n / r.seconds for c, r in report.task.items() if r.seconds}
    out |= {f"perplexity {c} tokens/s": r.n_tokens / r.seconds for c, r in report.perplexity.items() if r.seconds}
    for cand, results in report.benchmarks.items():
        out |= {f"{b} {cand} items/s": r.n / r.seconds for b, r in results.items() if getattr(r, "seconds", 0)}
    return {k: round(v, 2) for k, v in out.items()}


def show(now: dict, before: dict | None) -> None:
    print(f"run {now['run']} ({now['status']}), wall {now['wall_s'] or 0:.0f} s, steps {now['steps_total_s']:.0f} s")
    print(f"{'step':<15}{'seconds':>9}{'share':>8}  status" + ("     before   ratio" if before else ""))
    for name, s in now["steps"].items():
        sec = s["seconds"] or 0.0
        line = f"{name:<15}{sec:9.1f}{sec / max(now['steps_total_s'], 1e-9):8.1%}  {s['status']:<10}"
        old = (before or {}).get("steps", {}).get(name, {}).get("seconds")
        if old:
            line += f"{old:9.1f} {sec / old:6.2f}x"
        print(line)
    if now["sft_tokens_per_s"]:
        old = (before or {}).get("sft_tokens_per_s")
        print(f"train_sft: {now['sft_tokens_per_s']} tokens/s"
              + (f"   (before {old}, {now['sft_tokens_per_s'] / old:.2f}x)" if old else ""))
    for key, value in now["evaluation"].items():
        old = (before or {}).get("evaluation", {}).get(key)
        print(f"  {key:<28} {value}" + (f"   (before {old}{'' if old == value else ' CHANGED'})" if before else ""))
    for key, value in now.get("throughput", {}).items():
        old = (before or {}).get("throughput", {}).get(key)
        print(f"  {key:<36} {value:8.2f}" + (f"   (before {old:.2f}, {value / old:.2f}x)" if old else ""))
    for name, e in now["exports"].items():
        print(f"  export {name:<20} {'passed' if e['passed'] else 'rejected'} {'not asked' if e['score'] is None else format(e['score'], '.3f')} {e['reason'][:60]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the pipeline first (tuneline run CONFIG)")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--run-id", help="report this run instead of the newest")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--compare", type=Path, help="a --json file of an earlier run: print ratios against it")
    ap.add_argument("--paired", type=Path, help="a --json file of a run on the same rows: final vs final, paired CIs")
    args = ap.parse_args()
    if args.run:
        subprocess.run([str(Path(sys.executable).parent / "tuneline"), "run", args.config], cwd=ROOT, check=True)
    now = collect(args.run_id)
    before = json.loads(args.compare.read_text()) if args.compare else None
    show(now, before)
    if args.paired:
        paired(now, json.loads(args.paired.read_text()))
    if args.json:
        args.json.write_text(json.dumps(now, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
