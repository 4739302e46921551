"""The promotion gate on constructed reports: a real gain passes, a real drop fails, noise passes."""

import numpy as np
import pytest

from tuneline.config import PromoteConfig
from tuneline.eval.report import EvalReport
from tuneline.eval.stats import paired_bootstrap
from tuneline.eval.task import TaskResult
from tuneline.export.records import ExportFile, ExportSample
from tuneline.promote import decide, with_exports

EXPORTS = [ExportFile(format="gguf", qtype="F16", path="model-F16.gguf", passed=True, reason="ok")]


def _task(scores):
    return TaskResult(score=float(np.mean(scores)), n=len(scores), per_item=list(map(float, scores)),
                      item_ids=[str(i) for i in range(len(scores))], predictions=[""] * len(scores), seconds=0)


def _report(base_task, final_task, base_bench, final_bench) -> EvalReport:
    return EvalReport(
        task={"base": _task(base_task), "sft": _task(final_task)},
        task_vs_base={"sft": paired_bootstrap(final_task, base_task)},
        benchmarks={}, benchmarks_vs_base={"mmlu": paired_bootstrap(final_bench, base_bench)},
        final="sft", seconds=0,
    )


rng = np.random.default_rng(0)
N = 200
BASE = rng.integers(0, 2, N).astype(float)


def test_significant_gain_without_forgetting_promotes():
    d = decide(_report(np.zeros(N), np.r_[np.ones(150), np.zeros(50)], BASE, BASE), EXPORTS, PromoteConfig())
    assert d.promote and d.stage == "staging"


def test_no_gain_is_not_promoted_and_says_why():
    d = decide(_report(np.zeros(N), np.zeros(N), BASE, BASE), EXPORTS, PromoteConfig())
    assert not d.promote and "min_task_gain" in d.sentence()


def test_large_benchmark_drop_blocks_promotion():
    forgot = BASE * (rng.random(N) < 0.3)  # most right answers become wrong
    d = decide(_report(np.zeros(N), np.ones(N), BASE, forgot), EXPORTS, PromoteConfig())
    assert not d.promote and "forgot" in d.sentence()


def test_benchmark_noise_does_not_block():
    flipped = BASE.copy()
    idx = rng.choice(N, 6, replace=False)
    flipped[idx] = 1 - flipped[idx]  # a few flips both ways: noise
    d = decide(_report(np.zeros(N), np.ones(N), BASE, flipped), EXPORTS, PromoteConfig())
    assert d.promote


def test_no_passing_export_blocks_promotion():
    d = decide(_report(np.zeros(N), np.ones(N), BASE, BASE), [ExportFile(format="gguf", qtype="Q4_K_M", path="m.gguf", reason="gibberish")],
               PromoteConfig())
    assert not d.promote and "Q4_K_M: gibberish" in d.sentence()


def test_significant_perplexity_rise_blocks_promotion():
    base_nll = rng.normal(2.0, 0.3, N)
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    rep.nll_vs_base = paired_bootstrap(base_nll + 0.5, base_nll)  # exp(0.5) - 1 = +65 %
    d = decide(rep, EXPORTS, PromoteConfig())
    assert not d.promote and "perplexity rose" in d.sentence()
    rep.nll_vs_base = paired_bootstrap(base_nll + rng.normal(0, 0.05, N), base_nll)  # noise
    assert decide(rep, EXPORTS, PromoteConfig()).promote


def test_worse_than_the_current_version_is_not_promoted():
    current = _report(np.zeros(N), np.ones(N), BASE, BASE)
    worse = _report(np.zeros(N), np.r_[np.ones(120), np.zeros(80)], BASE, BASE)
    d = decide(worse, EXPORTS, PromoteConfig(), current=current)
    assert not d.promote and "significantly worse than the version it would replace" in d.sentence()
    assert decide(worse, EXPORTS, PromoteConfig(compare_to_current=False), current=current).promote
    assert decide(current, EXPORTS, PromoteConfig(), current=worse).promote


def _export(qtype, scores, **fields) -> ExportFile:
    samples = [ExportSample(prompt="", expected="", predicted="x", finish_reason="stop") for _ in scores]
    return ExportFile(format="gguf", qtype=qtype, path=f"model-{qtype}.gguf", passed=True, reason="ok",
                      score=float(np.mean(scores)), per_item=list(map(float, scores)), samples=samples, **fields)


def test_merged_and_exports_join_the_candidates_paired_with_base():
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    half = np.r_[np.ones(N // 2), np.zeros(N // 2)]
    q4 = _export("Q4_K_M", half, seconds=60.0, ask_seconds=20.0)
    full = with_exports(rep, _task(np.ones(N)), [_export("F16", np.ones(N)), q4])
    assert list(full.task) == ["base", "sft", "merged", "gguf-F16", "gguf-Q4_K_M"]
    # Its rows/s is the asking alone: making the file and its perplexity are not task scoring.
    assert full.task["gguf-Q4_K_M"].seconds == 20.0
    assert full.task_vs_base["gguf-Q4_K_M"].diff == 0.5 and full.task_vs_base["gguf-Q4_K_M"].n == N
    assert full.task_vs_base["merged"].ci_low > 0.9
    assert "gguf-Q4_K_M" not in rep.task  # the evaluation artifact itself is not changed


def test_exports_scored_on_other_rows_are_refused():
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    stranger = _task(np.ones(4)).model_copy(update={"item_ids": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="rows the base was not"):
        with_exports(rep, stranger, [])


def test_merge_that_lost_accuracy_blocks_promotion():
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    rep.task["sft"].predictions = ["right"] * N
    lossy = _task(np.r_[np.ones(N // 2), np.zeros(N // 2)])
    d = decide(with_exports(rep, lossy, []), EXPORTS, PromoteConfig())
    assert not d.promote and "merging lost accuracy" in d.sentence()
    same = _task(np.ones(N)).model_copy(update={"predictions": ["right"] * N})
    d = decide(with_exports(rep, same, []), EXPORTS, PromoteConfig())
    assert d.promote and f"{N}/{N} identical answers" in d.sentence()


def _bench(scores, ids):
    from tuneline.eval.harness import BenchmarkResult

    return BenchmarkResult(name="mmlu_cloze", metric="acc", score=float(np.mean(scores)), n=len(scores),
                           per_item=list(map(float, scores)), item_ids=ids, seconds=0)


def test_export_benchmarks_join_the_forgetting_table_paired_by_item():
    ids = [f"marketing:{i:04d}" for i in range(N)]
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE).model_copy(update={"benchmarks": {"base": {"mmlu": _bench(BASE, ids)}}})
    forgot = BASE * (rng.random(N) < 0.3)
    q4 = _export("Q4_K_M", np.ones(N), benchmarks={"mmlu": _bench(forgot[::-1], ids[::-1])})
    full = with_exports(rep, _task(np.ones(N)), [q4], reference_benchmarks={"mmlu": _bench(BASE, ids)})
    assert set(full.benchmark_changes) == {"merged", "gguf-Q4_K_M"}
    assert full.benchmark_changes["merged"]["mmlu"].diff == 0
    # Paired by item id, not by position: the reversed list gives the same difference as the original.
    assert full.benchmark_changes["gguf-Q4_K_M"]["mmlu"].diff == pytest.approx(float(np.mean(forgot - BASE)))
    assert full.benchmark_changes["gguf-Q4_K_M"]["mmlu"].ci_high < 0
    bad = _export("F16", np.ones(N), benchmarks={"mmlu": _bench(BASE[:3], ["x", "y", "z"])})
    with pytest.raises(ValueError, match="items the base was not scored on"):
        with_exports(rep, _task(np.ones(N)), [bad])


def test_export_perplexity_joins_the_report_paired_with_base_text_by_text():
    from tuneline.dashboard import evaluation_html, run_summary
    from tuneline.eval.perplexity import PerplexityResult

    base_nll = rng.normal(2.0, 0.3, 50)
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE).model_copy(update={"benchmarks_vs_base": {}})
    rep.perplexity = {"base": PerplexityResult(ppl=float(np.exp(base_nll.mean())), per_item=list(base_nll))}
    q4 = _export("Q4_K_M", np.ones(N), perplexity=9.9, perplexity_increase=0.08, auto="tried",
                 nll_per_item=list(base_nll + 0.3), size_bytes=2**20, eos_share=1.0)
    merged = PerplexityResult(ppl=7.5, per_item=list(base_nll + 0.01))
    full = with_exports(rep, _task(np.ones(N)), [q4], reference_perplexity=merged)
    assert set(full.perplexity) == {"base", "merged", "gguf-Q4_K_M"}
    assert full.nll_changes["gguf-Q4_K_M"].ci_low > 0.29 and full.nll_changes["gguf-Q4_K_M"].n == 50
    assert "+8.00%" in evaluation_html(full, "x", [q4]) and "tried by auto" in evaluation_html(full, "x", [q4])
    gptq = q4.model_copy(update={"format": "gptq", "qtype": "W4G32", "path": "model", "auto": "", "passed": False,
                                 "reason": "too far"})
    summary = run_summary(full, [q4, gptq], "not promoted", "m")
    assert "export model-Q4_K_M.gguf: 1.0 MB, score 100.0%, perplexity +8.00% vs merged, passed" in summary
    assert "export gptq-W4G32: 1.0 MB" in summary and "REJECTED: too far" in summary
    page = evaluation_html(full, "x", [q4, gptq])
    assert "<td>100%</td><td>pass</td>" in page and "<td>-</td><td>REJECTED</td>" in page  # EOS: GGUF only
    short = q4.model_copy(update={"nll_per_item": list(base_nll[:10])})
    with pytest.raises(ValueError, match="10 general texts, the base on 50"):
        with_exports(rep, _task(np.ones(N)), [short])


def test_model_card_carries_lineage_and_the_evaluation_table():
    from tuneline.dashboard import evaluation_markdown
    from tuneline.export.merge import model_card
    from tuneline.model.base import BaseModelRef

    rep = _report(np.zeros(N), np.ones(N), BASE, BASE).model_copy(update={"benchmarks_vs_base": {}})
    table = evaluation_markdown(rep)
    assert table.splitlines()[0].startswith("| candidate | task exact_match (n=200) |")
    assert "| sft | 100.0% (+100.0% vs base, 95% CI +100.0%..+100.0%) |" in table and "| base | 0.0% |" in table
    ref = BaseModelRef(source="tiny", path="/x", sha256="ab" * 32)
    card = model_card(ref, "/tmp/dpo-adapter", {"data_sha256": "f00d", "config": {"sft": {"method": "lora"}}}, table)
    assert "sha256 `abababababababab`" in card and 'data_sha256: `"f00d"`' in card and '"method": "lora"' in card
    assert card.index("## Lineage") < card.index("## Evaluation") and table.strip() in card


def test_perplexity_sentence_quotes_the_report_table():
    """The table's perplexity is token-weighted; the sentence must quote the same figures (issue 15)."""
    from tuneline.eval.perplexity import PerplexityResult

    base_nll = rng.normal(2.0, 0.3, N)
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE)
    rep.nll_vs_base = paired_bootstrap(base_nll + 0.3, base_nll)
    rep.perplexity = {"base": PerplexityResult(ppl=17.65, per_item=list(base_nll)),
                      rep.final: PerplexityResult(ppl=24.125, per_item=list(base_nll + 0.3))}
    sentence = decide(rep, EXPORTS, PromoteConfig()).sentence()
    assert "17.65 -> 24.12" in sentence and "+36.7%" in sentence


def test_merged_model_stands_for_the_final_adapter_in_the_forgetting_checks():
    """evaluate(final_on_merged=True) leaves MMLU and perplexity to the merged model: with_exports takes the
    forgetting comparisons from it, so a merged model that forgot blocks promotion."""
    from tuneline.eval.perplexity import PerplexityResult

    ids = [f"marketing:{i:04d}" for i in range(N)]
    base_nll = rng.normal(2.0, 0.3, N)
    rep = _report(np.zeros(N), np.ones(N), BASE, BASE).model_copy(update={
        "benchmarks": {"base": {"mmlu": _bench(BASE, ids)}}, "benchmarks_vs_base": {}, "forgetting_on": "merged",
        "perplexity": {"base": PerplexityResult(ppl=float(np.exp(base_nll.mean())), per_item=list(base_nll))}})
    assert decide(rep, EXPORTS, PromoteConfig()).promote  # nothing measured yet: nothing to block
    forgot = np.zeros(N)
    full = with_exports(rep, _task(np.ones(N)), [], reference_benchmarks={"mmlu": _bench(forgot, ids)},
                        reference_perplexity=PerplexityResult(ppl=99.0, per_item=list(base_nll + 1.0)))
    assert full.benchmarks_vs_base["mmlu"].diff == pytest.approx(-float(BASE.mean()))
    assert full.nll_vs_base.diff == pytest.approx(1.0)
    d = decide(full, EXPORTS, PromoteConfig())
    assert not d.promote and any("the model forgot" in r and "mmlu" in r for r in d.reasons), d.reasons
    assert any("perplexity rose" in r and "-> 99.00" in r for r in d.reasons), d.reasons
    # A report whose final adapter was measured itself keeps its own comparisons.
    own = with_exports(rep.model_copy(update={"forgetting_on": "sft"}), _task(np.ones(N)), [],
                       reference_benchmarks={"mmlu": _bench(forgot, ids)})
    assert own.benchmarks_vs_base == {}


@pytest.mark.parametrize("change, merged", [
    ({}, True), ({"sft": {"method": "qlora"}}, False), ({"sft": {"method": "auto"}}, False),
    ({"sft": {"method": "prefix_tuning", "padding_free": False}, "dpo": {"enabled": False}}, False),
    ({"export": {"benchmarks": False}}, False),
])
def test_final_model_is_measured_on_the_merged_weights_only_where_they_are_the_adapter(change, merged):
    from tuneline.config import TunelineConfig, deep_merge
    from tuneline.eval.evaluate import scored_on_merged

    assert scored_on_merged(TunelineConfig.model_validate(deep_merge({}, change))) is merged
