"""What an export step hands on: one ExportFile per file made, whatever its format, and the merged
model's results each file was judged against.

    checks = ExportChecks.of(cfg.evaluate, cfg.export, carried_length(task_data))  # data.max_new_tokens, resolved
    reference = merged_reference(merged_dir, checked_rows(eval_rows, cfg.export.check_rows), checks)  # once
    res = export_gguf(merged_dir, out, eval_rows, cfg.export, checks, reference)
    {f.candidate: f.passed for f in res.files}      # {"gguf-F16": True, "gguf-Q8_0": True, ...}
    shipped(res.files).candidate                    # "gguf-Q6_K": the file the promotion ships

`tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf` prints these records; the evaluation, the
promotion and the dashboard read their fields. A new format adds its name to ExportFormat and one
function that makes and checks its files (gguf.export_gguf, quantize.export_quantized).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tuneline.eval.harness import BenchmarkResult
from tuneline.eval.perplexity import PerplexityResult
from tuneline.eval.task import TaskResult

ExportFormat = Literal["gguf", "gptq", "awq"]


class ExportSample(BaseModel):
    prompt: str
    expected: str
    predicted: str
    finish_reason: str  # "stop", "length"; "" where the runtime does not say (GPTQ/AWQ through transformers)


class ServeCheck(BaseModel):
    """A GGUF file served by llama.cpp's OpenAI-compatible server and asked the gate's prompts through the
    official `openai` client (tuneline.export.serve): the answers a user of the file will get."""

    served: bool = False  # the server started and answered every prompt
    n: int = 0  # prompts sent
    identical: int = 0  # served answers equal to the gate's in-process answers
    stopped: int = 0  # responses with finish_reason "stop"
    # Responses cut at max_tokens exactly where the gate's in-process answer was cut too: the answer is
    # longer than data.max_new_tokens allows (raise it), not a stop token the server misses.
    cut_as_gate: int = 0
    mismatches: list[str] = []  # the first few prompts whose served answer differs, or did not stop
    command: str = ""  # how to serve the file with llama.cpp's server
    ollama: str = ""  # how to serve it with Ollama and the Modelfile beside it
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.served and self.identical == self.n == self.stopped + self.cut_as_gate

    def sentence(self) -> str:
        """One line for the report and the run summary: the figure, then what went wrong if anything."""
        if not self.served:
            return f"not served: {self.error or 'the server did not answer'}"
        text = (f"{self.identical}/{self.n} served answers equal to the gate's, {self.stopped} stopped by a stop token"
                f"{f', {self.cut_as_gate} cut at max_tokens like the gate' if self.cut_as_gate else ''}"
                f" ({self.seconds:.0f} s): {'pass' if self.ok else 'FAILED'}")
        return text + (f"; first differences: {'; '.join(self.mismatches[:3])}" if self.mismatches else "")


class ExportFile(BaseModel):
    """One exported file (or, for GPTQ/AWQ, model dir) with its checks and the gate's verdict."""

    format: ExportFormat
    qtype: str  # GGUF type (F16, Q8_0, ...) or W<bits>G<group size> for GPTQ/AWQ
    path: str  # absolute while exporting; the name inside ExportDir.path once stored
    size_bytes: int = 0
    sha256: str = ""
    score: float = 0.0  # mean task metric on the checked rows
    # False: the rows were not asked, because the file's perplexity had already rejected it (export_gguf saves
    # the 200 generations that could not change the verdict), or because it is the converted GGUF file (F16),
    # judged on its perplexity while a smaller file made from it passed them and ships; `score` is then not a
    # measurement.
    asked: bool = True
    eos_share: float = 0.0
    passed: bool = False
    reason: str = ""
    seconds: float = 0.0  # making this file plus checking it
    ask_seconds: float = 0.0  # asking its task rows alone (the report's rows/s); 0.0 when they were not asked
    samples: list[ExportSample] = []
    per_item: list[float] = []  # task metric per checked row, in row order (paired with other candidates)
    modelfile: str = ""  # Ollama Modelfile beside a passed file
    modelfile_note: str = ""  # why a passed file has no Modelfile ("no Modelfile: ..."); it stays passed
    perplexity: float | None = None  # on the general texts, same token ids as the merged model's
    perplexity_increase: float | None = None  # relative to the merged model on the same texts (0.01 = +1 %)
    perplexity_reference: float | None = None  # the merged model's perplexity on the texts this file was scored on
    nll_per_item: list[float] = []  # per text, pairs with the candidates' PerplexityResult.per_item
    # Set when the gate stopped scoring early (gate.judge_perplexity): the rise's lower bound on the texts scored
    # (nll_per_item, fewer than all) was already over the limit. None: every text was scored.
    perplexity_bound: float | None = None
    auto: str = ""  # "tried" / "picked" when `auto` in the types chose among export.auto_types
    versions: dict[str, str | None] = {}  # the tools that made and checked the file
    benchmarks: dict[str, BenchmarkResult] = {}  # MMLU / GSM8K on this file: the file that ships (`shipped`)
    # Why MMLU / GSM8K did not run on this file although export.benchmarks is on ("not run (...)"); "" otherwise.
    benchmarks_note: str = ""
    serve: ServeCheck | None = None  # the serving check, on the file that ships

    @property
    def candidate(self) -> str:
        """The file's name among the report's candidates (base, sft, dpo, merged, gguf-Q8_0, gptq-W4G32)."""
        return f"{self.format}-{self.qtype}"

    def score_text(self, metric: str) -> str:
        """The task score as the reports print it, or why there is none."""
        from tuneline.eval.scoring import show

        if self.asked:
            return show(metric, self.score)
        return "not asked (a smaller file ships)" if self.passed else "not asked (perplexity rejected it)"

    @property
    def predictions(self) -> list[str]:
        return [s.predicted for s in self.samples]

    @property
    def eos_measured(self) -> bool:
        """GGUF answers report why they stopped; GPTQ/AWQ stop on the merged model's generation config."""
        return self.format == "gguf"


def shipped(files: list[ExportFile]) -> ExportFile | None:
    """The file a promotion ships: the smallest GGUF file that passed its gate (export_gguf serves it, and it alone
    runs MMLU / GSM8K; a failed serving check rejects it and the next smallest is served in its place). The
    promotion names it."""
    passing = [f for f in files if f.passed and f.format == "gguf"]
    return min(passing, key=lambda f: f.size_bytes, default=None)


class MergedReference(BaseModel):
    """The merged HF model on the export gate's rows and texts, scored once per run (the score_merged step) and
    handed to every export step: each file is judged against it. `key` (gate.reference_key) says which rows and
    checks it was scored on; an export of other rows or checks refuses it rather than judge against it."""

    key: str
    task: TaskResult  # the merged model on the checked rows: the "merged" candidate
    benchmarks: dict[str, BenchmarkResult] = {}  # MMLU / GSM8K, when export.benchmarks
    perplexity: PerplexityResult | None = None  # on the general texts; None: no perplexity check
    ppl_ids: list[list[int]] = []  # the general texts' token ids, for scoring the exports on the same tokens
    task_ids: list[list[int]] = []  # metric perplexity: the held-out documents' token ids, likewise

    def result(self, fmt: ExportFormat, files: list[ExportFile]) -> ExportResult:
        """An export step's result: its files, judged against this reference."""
        return ExportResult(format=fmt, files=files, reference=self.task, reference_benchmarks=self.benchmarks,
                            reference_perplexity=self.perplexity)


class ExportResult(BaseModel):
    """The files of one export step, and the merged HF model on the same rows and texts (the reference)."""

    format: ExportFormat
    files: list[ExportFile]
    reference: TaskResult  # the merged model on the checked rows: the "merged" candidate
    reference_benchmarks: dict[str, BenchmarkResult] = {}  # the merged model's MMLU / GSM8K
    reference_perplexity: PerplexityResult | None = None  # the merged model on the general texts

    def stored(self) -> ExportResult:
        """The same result with each file's path made relative to the export dir (the artifact moves)."""
        return self.model_copy(update={"files": [f.model_copy(update={"path": Path(f.path).name}) for f in self.files]})
