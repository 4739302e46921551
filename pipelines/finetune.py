"""The tuneline pipeline: raw data to an evaluated, merged, exported and gated model.

    zenml pipeline run pipelines.finetune.finetune -c configs/default.yaml

Steps: prepare_base -> plan; snapshot_data -> validate_data -> data_gate -> train_sft -> train_dpo -> evaluate -> merge ->
export_gguf, export_gptq, export_awq -> promote. Each step takes its own config section, so changing one section
re-runs that step and what follows it, and nothing before.
"""

from zenml import pipeline
from zenml.config import StepRetryConfig

from steps.data_gate import data_gate
from steps.evaluate import evaluate
from steps.export_gguf import export_gguf
from steps.export_quantized import export_awq, export_gptq
from steps.merge import merge
from steps.plan import plan
from steps.prepare_base import prepare_base
from steps.promote import promote
from steps.snapshot_data import snapshot_data
from steps.train_dpo import train_dpo
from steps.train_sft import train_sft
from steps.validate_data import validate_data
from tuneline.config import TunelineConfig
from tuneline.data.snapshot import fingerprint
from tuneline.eval.perplexity import general_text_sha256
from tuneline.export.gate import ExportChecks

# A step killed by an OOM or a storage error runs again (training resumes from its checkpoint) instead of failing
# the run. A run config changes it per step: steps: {train_sft: {retry: {max_retries: 5, delay: 30, backoff: 2}}}
# (the Kubernetes orchestrator retries the step's Job and ignores delay and backoff).
RETRY = StepRetryConfig(max_retries=2, delay=0, backoff=0)
train_sft, train_dpo, evaluate, merge, export_gguf, export_gptq, export_awq = (
    s.with_options(retry=RETRY) for s in (train_sft, train_dpo, evaluate, merge, export_gguf, export_gptq, export_awq))
RETRIED_STEPS = ("train_sft", "train_dpo", "evaluate", "merge", "export_gguf", "export_gptq", "export_awq")


@pipeline(enable_cache=True)
def finetune(config: TunelineConfig = TunelineConfig()) -> None:
    base = prepare_base(config.base_model, config.data.chat_template)
    plan(base, config.sft, config.data.max_tokens)  # the memory plan (and method: auto's pick), before any data work
    mmlu = config.evaluate.mmlu.subjects if config.evaluate.mmlu else None  # contamination checks these
    # The data files' hash is a parameter: changed data re-runs the snapshot and everything after it,
    # unchanged data stays cached.
    data_sha256 = fingerprint(config.data)
    # evaluate.perplexity's general texts are read here too, before training, into their own artifact keyed by
    # the file's hash: the evaluation and the exports score that snapshot, so editing the file re-runs them
    # (and not validation or training: raw_data's content hash stays the same).
    perplexity = config.evaluate.perplexity
    raw, general_text = snapshot_data(config.data, data_sha256, perplexity, general_text_sha256(perplexity))
    task_data, preference_data, _rejected, validation, _report = validate_data(base, raw, config.data, mmlu,
                                                                               config.dpo.data_use())
    data_gate(validation)
    sft_adapter, _ = train_sft(base, task_data, config.sft, config.data.max_tokens, after=["data_gate", "plan"])
    final = sft_adapter
    dpo_adapter = None
    if config.dpo.enabled:
        dpo_adapter, _ = train_dpo(base, sft_adapter, task_data, preference_data, config.dpo,
                                   metric=config.evaluate.metric)  # mining judges answers by the task metric
        final = dpo_adapter
    evaluation, _ = evaluate(base, sft_adapter, dpo_adapter, task_data, config.evaluate, general_text)
    # The model card carries the lineage (data hash, adapters, config) and the evaluation table.
    training = {"sft": config.sft.model_dump(mode="json"), "dpo": config.dpo.model_dump(mode="json")}
    merged = merge(base, final, config.merge, evaluation, data_sha256, training)
    # The exports take of `evaluate` only what they check with, so its other knobs (bootstrap_resamples)
    # re-run the evaluation and the promotion, not the exports.
    checks = ExportChecks.of(config.evaluate, config.export)
    gguf = export_gguf(merged, task_data, config.export, checks, general_text)
    # One step per format: a failed quantization fails only its own step, the others stay cached.
    q = (merged, task_data, config.quantize, config.export, checks, general_text)
    gptq = export_gptq(*q) if "gptq" in config.quantize.methods else None
    awq = export_awq(*q) if "awq" in config.quantize.methods else None
    promote(evaluation, gguf, config.promote, gptq_export=gptq, awq_export=awq)
