"""HTML pages for the dashboard: the evaluation comparison and the data validation summary."""

from __future__ import annotations

import base64
import html
import io

from tuneline.evaluate import EvalReport


def _bar_chart(report: EvalReport) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.task)
    fig, ax = plt.subplots(figsize=(6, 3))
    vals = [report.task[n].accuracy for n in names]
    ax.bar(names, vals, color=["#999"] + ["#4a7"] * (len(names) - 1))
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01, f"{v:.1%}", ha="center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("task exact match")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _diff(d) -> str:
    sig = "significant" if d.ci_low > 0 or d.ci_high < 0 else "not significant"
    return f"{d.diff:+.1%} [{d.ci_low:+.1%}, {d.ci_high:+.1%}] ({sig}, p={d.p_value:.3f})"


def evaluation_html(report: EvalReport, decision_text: str | None = None, exports: list[dict] | None = None) -> str:
    rows = "".join(
        f"<tr><td>{n}</td><td>{r.accuracy:.1%}</td><td>{r.n}</td>"
        f"<td>{_diff(report.task_vs_base[n]) if n in report.task_vs_base else '-'}</td></tr>"
        for n, r in report.task.items()
    )
    bench_rows = ""
    for name, d in report.benchmarks_vs_base.items():
        base = report.benchmarks["base"][name]
        bench_rows += f"<tr><td>{name}</td><td>{base.score:.1%}</td><td>{d.mean_candidate:.1%}</td><td>{base.n}</td><td>{_diff(d)}</td></tr>"
    if report.nll_vs_base is not None:
        d = report.nll_vs_base
        verdict = "significant rise" if d.ci_low > 0 else ("significant fall" if d.ci_high < 0 else "no significant change")
        bench_rows += (f"<tr><td>general-text perplexity (lower is better)</td><td>{report.perplexity['base'].ppl:.2f}</td>"
                       f"<td>{report.perplexity[report.final].ppl:.2f}</td><td>{d.n}</td>"
                       f"<td>NLL {d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}] ({verdict})</td></tr>")
    export_rows = "".join(
        f"<tr><td>{e['qtype']}</td><td>{e['size_bytes'] / 2**20:.1f} MB</td><td>{e['accuracy']:.1%}</td>"
        f"<td>{'pass' if e['passed'] else 'REJECTED'}</td><td>{html.escape(e.get('reason', ''))}</td></tr>"
        for e in exports or []
    )
    return f"""<html><body style="font-family:sans-serif;max-width:900px">
<h2>tuneline evaluation</h2>
{f'<p><b>{html.escape(decision_text)}</b></p>' if decision_text else ''}
<h3>Task (held-out rows, exact match)</h3>
<img src="data:image/png;base64,{_bar_chart(report)}"/>
<table border=1 cellpadding=4><tr><th>candidate</th><th>accuracy</th><th>n</th><th>vs base (95% CI)</th></tr>{rows}</table>
<h3>Forgetting checks: base vs {report.final}</h3>
<table border=1 cellpadding=4><tr><th>benchmark</th><th>base</th><th>{report.final}</th><th>n</th><th>change (95% CI)</th></tr>{bench_rows}</table>
{f'<h3>Exports</h3><table border=1 cellpadding=4><tr><th>type</th><th>size</th><th>accuracy</th><th>check</th><th>why</th></tr>{export_rows}</table>' if export_rows else ''}
<p style="color:#666">Evaluated in {report.seconds:.0f} s. CIs: paired bootstrap over the same items.</p>
</body></html>"""


def data_html(counts: dict, rejected_preview: list[dict]) -> str:
    items = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in counts.items())
    rej = "".join(
        f"<tr><td>{html.escape(r['source'].rsplit('/', 1)[-1])}:{r['line']}</td><td>{r['reason']}</td>"
        f"<td>{html.escape(r['field'])}</td><td>{html.escape(r['detail'])}</td></tr>"
        for r in rejected_preview
    )
    return f"""<html><body style="font-family:sans-serif">
<h2>Data validation</h2><table border=1 cellpadding=4>{items}</table>
<h3>Rejected rows (first {len(rejected_preview)}; all are in the rejected_rows artifact)</h3>
<table border=1 cellpadding=4><tr><th>file:line</th><th>reason</th><th>field</th><th>detail</th></tr>{rej}</table>
</body></html>"""


def run_summary(report: EvalReport, exports: list[dict], decision: str, model_name: str | None) -> str:
    """The plain-text summary printed at the end of a run."""
    task = " -> ".join(f"{n} {r.accuracy:.1%}" for n, r in report.task.items())
    lines = ["", "=" * 72, "tuneline run summary", "-" * 72, f"task accuracy ({report.task['base'].n} held-out rows): {task}"]
    for name, d in report.benchmarks_vs_base.items():
        lines.append(f"{name}: base {d.mean_base:.1%} -> {report.final} {d.mean_candidate:.1%} "
                     f"(change {d.diff:+.1%}, 95% CI {d.ci_low:+.1%}..{d.ci_high:+.1%}, n={d.n})")
    for name, p in report.perplexity.items():
        lines.append(f"general-text perplexity ({name}): {p.ppl:.2f}")
    for e in exports:
        lines.append(f"export {e['path']}: {e['size_bytes'] / 2**20:.1f} MB, accuracy {e['accuracy']:.1%}, "
                     f"{'passed' if e['passed'] else 'REJECTED: ' + e['reason']}")
    lines.append(f"model {model_name or '-'}: {decision}")
    lines.append("=" * 72)
    return "\n".join(lines)
