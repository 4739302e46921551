"""HTML pages, Markdown and PNG charts the ZenML dashboard and the run log show, from the steps' typed results.

    evaluation_report(report, decision.sentence(), files)  # promote's final_report (evaluate's, without exports)
    data_report(validated)                                 # validate_data's data_report
    loss_curve_report(res.history, "SFT loss")             # train_sft's sft_loss_curve

Each returns a `Report`; materializers/report.py stores its HTML page, its Markdown and each PNG as
separate dashboard visualizations (HTML first).
"""

from __future__ import annotations

import base64
import html
import io

from pydantic import BaseModel

from tuneline.eval.report import EvalReport
from tuneline.eval.scoring import MIXED, lower_is_better, show, show_change
from tuneline.export.records import ExportFile


class Report(BaseModel):
    """One dashboard report: an HTML page, the same facts as Markdown, and PNG charts by name."""

    html: str
    markdown: str = ""
    images: dict[str, bytes] = {}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def evaluation_chart_png(report: EvalReport) -> bytes:
    """Every candidate's task score as a bar (base grey)."""
    plt = _pyplot()
    names = list(report.task)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    vals = [report.task[n].score for n in names]
    ax.bar(names, vals, color=["#999"] + ["#4a7"] * (len(names) - 1))
    metric = report.task["base"].metric
    top = 1.0 if not lower_is_better(metric) else max(vals, default=1.0)  # perplexity has no upper bound
    for i, v in enumerate(vals):
        ax.text(i, v + 0.01 * top, show(metric, v), ha="center")
    ax.set_ylim(0, 1.05 * top)
    ax.set_ylabel(f"task {label(metric)}" + (" (lower is better)" if lower_is_better(metric) else ""))
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)


def label(metric: str) -> str:
    """A task metric's name as headings say it; a multi-task result's rows each have their task's metric."""
    return "score (each row in its task's metric)" if metric == MIXED else metric


def _diff(d, metric: str = "exact_match") -> str:
    sig = "significant" if d.ci_low > 0 or d.ci_high < 0 else "not significant"
    return "{} [{}, {}]".format(*show_change(metric, d)) + f" ({sig}, p={d.p_value:.3f})"


# Generated answers the report shows beside the gold answers: the first eval rows, in order (not picked by
# score, so they are a fair sample of what the models say).
EXAMPLES = 4
EXAMPLE_CHARS = 300  # longer prompts and answers are cut here (the evaluation artifact has them whole)


def _cut(text: str) -> str:
    text = text.strip()
    if not text:
        return "(empty)"  # nothing but whitespace: a model that never said a word shows as such
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " [...]"


def examples(report: EvalReport, n: int = EXAMPLES) -> list[dict]:
    """The first `n` eval rows: prompt, gold answer, and the base's and the final candidate's answers and scores."""
    base, final = report.task["base"], report.task[report.final]
    if not base.references or not base.predictions:  # older results, or a perplexity task: nothing generated
        return []
    theirs = dict(zip(final.item_ids, zip(final.predictions, final.per_item)))
    rows = []
    for i, item in enumerate(base.item_ids):
        if item in theirs and len(rows) < n:
            said, score = theirs[item]
            rows.append({"id": item, "prompt": base.prompts[i] if base.prompts else "", "gold": base.references[i],
                         "base": base.predictions[i], "base_score": base.per_item[i], "final": said,
                         "final_score": score})
    return rows


def _example_cells(report: EvalReport) -> list[list[str]]:
    """The examples table's cells, as the HTML page and the Markdown both show them (unescaped)."""
    return [[e["id"], _cut(e["prompt"]), _cut(e["gold"]), f"{_cut(e['base'])} ({e['base_score']:.2f})",
             f"{_cut(e['final'])} ({e['final_score']:.2f})"] for e in examples(report)]


def _examples_title(report: EvalReport) -> str:
    return f"Examples (the first {EXAMPLES} eval rows; {label(report.task['base'].metric)} in brackets)"


def _examples_html(report: EvalReport) -> str:
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                   for cells in _example_cells(report))
    if not rows:
        return ""
    return (f"<h3>{_examples_title(report)}</h3>"
            f"<table border=1 cellpadding=4><tr><th>row</th><th>prompt</th><th>gold answer</th><th>base</th>"
            f"<th>{html.escape(report.final)}</th></tr>{rows}</table>")


def examples_markdown(report: EvalReport) -> str:
    rows = _example_cells(report)
    if not rows:
        return ""
    return f"\n### {_examples_title(report)}\n\n" + _md_table(["row", "prompt", "gold answer", "base", report.final], rows)


def per_task_table(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Multi-task (data.tasks): one row per task, in its own metric: the base's score and each candidate's, with its
    paired change vs base on the task's rows (95% CI). ([], []) for a single-task run."""
    gains = report.per_task()
    if not gains:
        return [], []
    names = [n for n in report.task if n != "base"]
    rows = []
    for g in gains:
        cells = [g.task, g.metric, str(g.n), show(g.metric, g.base)]
        for n in names:
            d = g.candidates.get(n)
            cells.append("-" if d is None else show(g.metric, d.mean_candidate) + " ({} [{}, {}]{})".format(
                *show_change(g.metric, d), "" if d.ci_low > 0 or d.ci_high < 0 else ", n.s."))
        rows.append(cells)
    return ["task", "metric", "n", "base", *(f"{n} (vs base, 95% CI)" for n in names)], rows


def _per_task_html(report: EvalReport) -> str:
    head, rows = per_task_table(report)
    if not rows:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return ("<h3>Per task (each on its own rows and metric; n.s.: not significant)</h3><table border=1 cellpadding=4>"
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>")


def per_task_markdown(report: EvalReport) -> str:
    head, rows = per_task_table(report)
    return "\n### Per task (each on its own rows and metric; n.s.: not significant)\n\n" + _md_table(head, rows) if rows else ""


def _forgetting_rows(report: EvalReport) -> str:
    """One row per benchmark and checked candidate, each paired with the base on the same items."""
    changes = report.benchmark_changes or {report.final: report.benchmarks_vs_base}
    rows = ""
    for cand, diffs in changes.items():
        for name, d in diffs.items():
            base = report.benchmarks["base"][name]
            rows += f"<tr><td>{name}</td><td>{cand}</td><td>{base.score:.1%}</td><td>{d.mean_candidate:.1%}</td><td>{base.n}</td><td>{_diff(d)}</td></tr>"
    nll = report.nll_changes or ({report.final: report.nll_vs_base} if report.nll_vs_base else {})
    for cand, d in nll.items():
        verdict = "significant rise" if d.ci_low > 0 else ("significant fall" if d.ci_high < 0 else "no significant change")
        rows += (f"<tr><td>general-text perplexity (lower is better)</td><td>{cand}</td><td>{report.perplexity['base'].ppl:.2f}</td>"
                 f"<td>{report.perplexity[cand].ppl:.2f}</td><td>{d.n}</td>"
                 f"<td>NLL {d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}] ({verdict})</td></tr>")
    return rows


def _export_row(e: ExportFile, metric: str = "exact_match") -> str:
    ppl = f"{e.perplexity:.3f} ({e.perplexity_increase:+.2%})" if e.perplexity_increase is not None else "-"
    auto = {"picked": " (auto's pick)", "tried": " (tried by auto)"}.get(e.auto, "")
    return (f"<tr><td>{e.format}</td><td>{e.qtype}{auto}</td><td>{e.size_bytes / 2**20:.1f} MB</td>"
            f"<td>{e.score_text(metric)}</td><td>{ppl}</td>"
            f"<td>{format(e.eos_share, '.0%') if e.eos_measured else '-'}</td>"
            f"<td>{'pass' if e.passed else 'REJECTED'}</td><td>{html.escape(e.reason)}</td></tr>")


def _served(exports: list[ExportFile]) -> list[ExportFile]:
    return [e for e in exports if e.serve is not None]


def _serving_html(exports: list[ExportFile]) -> str:
    """The serving check (llama.cpp's OpenAI-compatible server asked through the openai client) and how to serve."""
    items = "".join(
        f"<p><b>{html.escape(e.path)}</b>: {html.escape(e.serve.sentence(), quote=False)}</p>"
        f"<pre>{html.escape(e.serve.command)}</pre>" + (f"<pre>{html.escape(e.serve.ollama)}</pre>" if e.serve.ollama else "")
        for e in _served(exports))
    return f"<h3>Serving check (OpenAI-compatible server, official client)</h3>{items}" if items else ""


def serving_markdown(exports: list[ExportFile]) -> str:
    parts = [f"**{e.path}**: {e.serve.sentence()}\n\n```\n{e.serve.command}\n"
             + (f"{e.serve.ollama}\n" if e.serve.ollama else "") + "```\n" for e in _served(exports)]
    return "\n## Serving check (OpenAI-compatible server, official client)\n\n" + "\n".join(parts) if parts else ""


def evaluation_markdown(report: EvalReport) -> str:
    """The candidates' task metric, benchmarks and general-text perplexity as a Markdown table (model card)."""
    metric = report.task["base"].metric
    benches = sorted({b for r in report.benchmarks.values() for b in r})
    head = f"| candidate | task {label(metric)} (n={report.task['base'].n}) | " + " | ".join(benches) + " | general-text perplexity |"
    rows = [head, "|" + "---|" * (len(benches) + 3)]
    for name, task in report.task.items():
        d = report.task_vs_base.get(name)
        vs = " ({} vs base, 95% CI {}..{})".format(*show_change(metric, d)) if d else ""
        scores = [f"{report.benchmarks[name][b].score:.1%}" if b in report.benchmarks.get(name, {}) else "-" for b in benches]
        ppl = f"{report.perplexity[name].ppl:.2f}" if name in report.perplexity else "-"
        rows.append(f"| {name} | {show(metric, task.score)}{vs} | " + " | ".join(scores) + f" | {ppl} |")
    return "\n".join(rows) + "\n" + per_task_markdown(report) + examples_markdown(report)


def evaluation_html(report: EvalReport, decision_text: str | None = None, exports: list[ExportFile] | None = None,
                    chart: bytes | None = None) -> str:
    metric = report.task["base"].metric
    rows = "".join(
        f"<tr><td>{n}</td><td>{show(metric, r.score)}</td><td>{r.n}</td>"
        f"<td>{_diff(report.task_vs_base[n], metric) if n in report.task_vs_base else '-'}</td></tr>"
        for n, r in report.task.items()
    )
    export_rows = "".join(_export_row(e, metric) for e in exports or [])
    return f"""<html><body style="font-family:sans-serif;max-width:1000px">
<h2>tuneline evaluation</h2>
{f'<p><b>{html.escape(decision_text)}</b></p>' if decision_text else ''}
<h3>Task ({report.task['base'].n} held-out rows, {label(metric)}; every candidate on the same rows)</h3>
<img src="data:image/png;base64,{_b64(chart or evaluation_chart_png(report))}"/>
<table border=1 cellpadding=4><tr><th>candidate</th><th>{label(metric)}</th><th>n</th><th>vs base (95% CI)</th></tr>{rows}</table>
{_per_task_html(report)}
{_examples_html(report)}
<h3>Forgetting checks (each candidate vs base, paired)</h3>
<table border=1 cellpadding=4><tr><th>benchmark</th><th>candidate</th><th>base</th><th>candidate</th><th>n</th><th>change (95% CI)</th></tr>{_forgetting_rows(report)}</table>
{f'<h3>Exports (judged against the merged model)</h3><table border=1 cellpadding=4><tr><th>format</th><th>type</th><th>size</th><th>{metric}</th><th>perplexity (vs merged)</th><th>stopped at EOS</th><th>check</th><th>why</th></tr>{export_rows}</table>' if export_rows else ''}
{_serving_html(exports or [])}
<p style="color:#666">Evaluated in {report.seconds:.0f} s. CIs: paired bootstrap over the same items.</p>
</body></html>"""


def data_html(v, chat_template: str = "") -> str:
    """The validation report: gate verdict, the chat template (which and why), row accounting, each check with
    its policy, balance, GX results."""
    from tuneline.data import expectations

    verdict = ("<p style='color:#a00'><b>Gate FAILED</b>: " + "<br>".join(map(html.escape, v.gate_failures)) + "</p>"
               if v.gate_failures else "<p style='color:#070'><b>Gate passed</b>: the data may be used for training.</p>")
    counts = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(x))}</td></tr>"
                     for k, x in v.counts.items() if k not in ("reasons", "tasks"))
    tasks = _data_tasks(v)
    tasks = ("<h3>Tasks (data.tasks: each read, checked and split on its own, then mixed by weight)</h3>"
             "<table border=1 cellpadding=4><tr>" + "".join(f"<th>{h}</th>" for h in TASK_HEAD) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in tasks)
             + "</table>" if tasks else "")
    checks = "".join(f"<tr><td>{k}</td><td>{c['policy']}</td><td>{c['flagged']}</td><td>{c.get('truncated', '')}</td></tr>"
                     for k, c in v.checks.items())
    reasons = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{x}</td></tr>" for k, x in v.counts.get("reasons", {}).items())
    bal = v.balance.get("train") or {}
    balance = (f"<p>{bal['classes']} classes, {bal['rows']} training rows; min {bal['min']}, max {bal['max']}, "
               f"max/min {bal['max_min_ratio']}, normalized entropy {bal['normalized_entropy']}</p>" if bal else
               "<p>No labels or categories: balance not measured.</p>")
    preview = v.rejected.head(50).to_dict("records")
    rej = "".join(
        f"<tr><td>{html.escape(str(r['source']).rsplit('/', 1)[-1])}:{r['line']}</td><td>{r['action']}</td>"
        f"<td>{html.escape(str(r['reason']))}</td><td>{html.escape(str(r['field']))}</td><td>{html.escape(str(r['detail']))}</td></tr>"
        for r in preview
    )
    gx = "".join(f"<h3>Great Expectations: {g['source']} ({g['shape']})</h3>" + _body(expectations.gx_html(g["result"], g["shape"]))
                 for g in v.gx)
    return f"""<html><body style="font-family:sans-serif;max-width:1000px">
<h2>Data validation</h2>{verdict}
{f"<p><b>Chat template</b>: {html.escape(chat_template)}</p>" if chat_template else ""}
{f"<p><b>Generation length</b> (data.max_new_tokens): {html.escape(_length(v))}</p>" if _length(v) else ""}
<h3>Rows (accepted + dropped + unused = input)</h3><table border=1 cellpadding=4>{counts}</table>
{tasks}
<h3>Checks</h3><table border=1 cellpadding=4><tr><th>check</th><th>policy</th><th>rows flagged</th><th>truncated</th></tr>{checks}</table>
<h3>Reasons</h3><table border=1 cellpadding=4><tr><th>reason</th><th>rows</th></tr>{reasons}</table>
<h3>Balance (training split)</h3>{balance}
{gx}
<h3>Quarantined and flagged rows (first {len(preview)}; all are in the rejected_rows artifact)</h3>
<table border=1 cellpadding=4><tr><th>file:line</th><th>action</th><th>reason</th><th>field</th><th>detail</th></tr>{rej}</table>
</body></html>"""


TASK_HEAD = ["task", "shape", "metric", "weight", "share", "input rows", "dropped", "train (of available)", "mining",
             "eval", "max_new_tokens (why)"]


def _data_tasks(v) -> list[list]:
    """Multi-task: one row per task of the data report's task table ([] for one task)."""
    return [[name, t["shape"], t["metric"], t["weight"], f"{t['share']:.0%}", t["input_rows"], t["dropped"],
             f"{t['train']} (of {t['train_available']})", t["mining"], t["eval"], t["max_new_tokens_why"]]
            for name, t in (v.counts.get("tasks") or {}).items()]


def _length(v) -> str:
    """How many tokens every generation of the run may produce, and why (tuneline.data.generation)."""
    length = getattr(v, "generation", None)
    return length.reason() if length is not None else ""


def _body(page: str) -> str:
    """The inside of <body> of a full HTML page, so reports can be nested."""
    lo, hi = page.find("<body"), page.rfind("</body>")
    return page[page.index(">", lo) + 1 : hi] if lo >= 0 and hi > lo else page


def run_summary(report: EvalReport, exports: list[ExportFile], decision: str, model_name: str | None) -> str:
    """The plain-text summary printed at the end of a run."""
    base = report.task["base"]
    lines = ["", "=" * 72, "tuneline run summary", "-" * 72, f"task {label(base.metric)} ({base.n} held-out rows):"]
    for n, r in report.task.items():
        d = report.task_vs_base.get(n)
        lines.append(f"  {n:<12} {show(base.metric, r.score):>6}"
                     + ("  vs base {} (95% CI {}..{})".format(*show_change(base.metric, d)) if d else ""))
    head, rows = per_task_table(report)
    lines += [f"  task {r[0]} ({r[1]}, {r[2]} rows): base {r[3]}; " + "; ".join(f"{h.split(' ')[0]} {c}"
                                                                          for h, c in zip(head[4:], r[4:])) for r in rows]
    for cand, diffs in (report.benchmark_changes or {report.final: report.benchmarks_vs_base}).items():
        for name, d in diffs.items():
            lines.append(f"{name}: base {d.mean_base:.1%} -> {cand} {d.mean_candidate:.1%} "
                         f"(change {d.diff:+.1%}, 95% CI {d.ci_low:+.1%}..{d.ci_high:+.1%}, n={d.n})")
    for name, p in report.perplexity.items():
        lines.append(f"general-text perplexity ({name}): {p.ppl:.2f}")
    for e in exports:
        ppl = f", perplexity {e.perplexity_increase:+.2%} vs merged" if e.perplexity_increase is not None else ""
        name = e.path if e.format == "gguf" else e.candidate  # a GGUF file's name says its type; a GPTQ/AWQ dir is "model"
        lines.append(f"export {name}{' (auto)' if e.auto == 'picked' else ''}: {e.size_bytes / 2**20:.1f} MB, "
                     f"score {e.score_text(base.metric)}{ppl}, {'passed' if e.passed else 'REJECTED: ' + e.reason}"
                     + (f"; MMLU/GSM8K {e.benchmarks_note}" if e.benchmarks_note and e.passed else ""))
        if e.serve is not None:
            lines += [f"  served by llama.cpp's OpenAI-compatible server: {e.serve.sentence()}", f"  serve it: {e.serve.command}"]
    lines.append(f"model {model_name or '-'}: {decision}")
    lines.append("=" * 72)
    return "\n".join(lines)


def loss_curve_png(history: list[dict], title: str) -> bytes:
    """The training (and eval) loss per logged step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def loss_curve_html(history: list[dict], title: str, png: bytes | None = None) -> str:
    """A self-contained HTML page with the training (and eval) loss plot as an inline PNG."""
    img = _b64(png or loss_curve_png(history, title))
    rows = "".join(f"<tr><td>{h.get('step')}</td><td>{h.get('loss', '')}</td><td>{h.get('eval_loss', '')}</td></tr>"
                   for h in history if "loss" in h or "eval_loss" in h)
    return (
        f"<html><body style='font-family:sans-serif'><h3>{title}</h3><img src='data:image/png;base64,{img}'/>"
        "<details><summary>values</summary><table><tr><th>step</th><th>train loss</th><th>eval loss</th></tr>"
        f"{rows}</table></details></body></html>"
    )


def memory_plan_html(rows: list[dict], title: str, auto_reason: str | None, available_gb: float) -> str:
    """The plan step's table (tuneline.train.plan.table rows): one coloured row per method, fits or not."""
    cols = ["method", "estimated_gb", "fits", "relative_time", "trainable_params", "weights_gb", "gradients_gb",
            "optimizer_gb", "autocast_copies_gb", "activations_gb", "logits_gb"]
    head = "".join(f"<th style='padding:2px 8px'>{c}</th>" for c in cols)
    body = ""
    for r in rows:
        color = "#e6f4ea" if r["fits"] else "#fce8e6"
        body += f"<tr style='background:{color}'>" + "".join(
            f"<td style='padding:2px 8px;text-align:right'>{r[c]}</td>" for c in cols) + "</tr>"
    pick = f"<p><b>auto picks:</b> {auto_reason}</p>" if auto_reason is not None else "<p><b>auto:</b> nothing fits</p>"
    return (f"<html><body style='font-family:sans-serif'><h3>{title}</h3><p>available: {available_gb:.1f} GB</p>{pick}"
            f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"
            f"<p style='color:#666'>Estimates from the model config (no weights): weights + gradients + AdamW "
            f"(2 fp32 states) + bf16 autocast copies + activations + logits. Relative time/cost: LoRA = 1.</p></body></html>")


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def exports_markdown(exports: list[ExportFile]) -> str:
    """The export gate's verdict per file, as a Markdown table."""
    rows = [[e.format, e.qtype + (" (auto)" if e.auto == "picked" else ""), f"{e.size_bytes / 2**20:.1f} MB",
             e.score_text("exact_match"), f"{e.perplexity_increase:+.2%}" if e.perplexity_increase is not None else "-",
             "pass" if e.passed else "REJECTED", e.reason] for e in exports]
    return _md_table(["format", "type", "size", "task score", "perplexity vs merged", "check", "why"], rows)


def data_markdown(v, chat_template: str = "") -> str:
    """The data validation summary: gate verdict, row accounting, checks, reasons, balance."""
    verdict = ("**Gate FAILED**: " + "; ".join(v.gate_failures) if v.gate_failures
               else "**Gate passed**: the data may be used for training.")
    counts = _md_table(["rows", "count"], [[k, x] for k, x in v.counts.items() if k not in ("reasons", "tasks")])
    if rows := _data_tasks(v):
        counts += "\n### Tasks (each read, checked and split on its own, then mixed by weight)\n\n" + _md_table(TASK_HEAD, rows)
    checks = _md_table(["check", "policy", "rows flagged", "truncated"],
                       [[k, c["policy"], c["flagged"], c.get("truncated", "")] for k, c in v.checks.items()])
    reasons = _md_table(["reason", "rows"], list(v.counts.get("reasons", {}).items()))
    bal = v.balance.get("train") or {}
    balance = (f"{bal['classes']} classes, {bal['rows']} training rows; min {bal['min']}, max {bal['max']}, "
               f"max/min {bal['max_min_ratio']}, normalized entropy {bal['normalized_entropy']}" if bal
               else "No labels or categories: balance not measured.")
    template = f"**Chat template**: {chat_template}\n\n" if chat_template else ""
    template += f"**Generation length** (data.max_new_tokens): {_length(v)}\n\n" if _length(v) else ""
    return (f"## Data validation\n\n{verdict}\n\n{template}### Rows (accepted + dropped + unused = input)\n\n{counts}\n"
            f"### Checks\n\n{checks}\n### Reasons\n\n{reasons}\n### Balance (training split)\n\n{balance}\n")


def data_report(v, chat_template: str = "") -> Report:
    """`chat_template`: which template the run uses and why (ChatTemplate.reason)."""
    return Report(html=data_html(v, chat_template), markdown=data_markdown(v, chat_template))


def loss_curve_report(history: list[dict], title: str) -> Report:
    png = loss_curve_png(history, title)
    return Report(html=loss_curve_html(history, title, png), images={"loss_curve": png})


def evaluation_report(report: EvalReport, decision_text: str | None = None,
                      exports: list[ExportFile] | None = None) -> Report:
    """The evaluation page, its table as Markdown (the exports' verdicts too), and the task chart."""
    png = evaluation_chart_png(report)
    md = (f"**{decision_text}**\n\n" if decision_text else "") + "## Evaluation\n\n" + evaluation_markdown(report)
    if exports:
        md += "\n## Exports (judged against the merged model)\n\n" + exports_markdown(exports) + serving_markdown(exports)
    return Report(html=evaluation_html(report, decision_text, exports, png), markdown=md,
                  images={"evaluation_chart": png})
