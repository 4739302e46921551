"""The tuneline pipeline: raw data to an evaluated, merged, exported and gated model.

    zenml pipeline run pipelines.finetune.finetune -c configs/default.yaml

Steps: prepare_base -> plan; snapshot_data -> validate_data -> data_gate -> eval_rows -> evaluate_base (cached while
the base, the eval rows and the evaluation settings stay the same); train_sft -> [train_reward] -> train_dpo ->
evaluate -> merge -> score_merged -> export_gguf, export_gptq, export_awq -> promote. Each step takes its own config
section, so changing one section re-runs that step and what follows it, and nothing before. train_reward runs only
with reward_model.enabled (RLHF: the reward model that dpo.loss_type rloo | grpo optimizes against).
"""

from zenml import pipeline
from zenml.config import StepRetryConfig

from steps.data_gate import data_gate
from steps.evaluate import evaluate
from steps.evaluate_base import eval_rows, evaluate_base
from steps.export_gguf import export_gguf
from steps.export_quantized import export_awq, export_gptq
from steps.merge import merge
from steps.plan import plan
from steps.prepare_base import prepare_base
from steps.promote import promote
from steps.score_merged import score_merged
from steps.snapshot_data import snapshot_data
from steps.train_dpo import train_dpo
from steps.train_reward import train_reward
from steps.train_sft import train_sft
from steps.validate_data import validate_data
from tuneline.config import TunelineConfig
from tuneline.data.snapshot import fingerprint
from tuneline.eval.evaluate import base_settings, scored_on_merged
from tuneline.eval.perplexity import general_text_sha256
from tuneline.export.gate import ExportChecks

# A step killed by an OOM or a storage error runs again (training resumes from its checkpoint) instead of failing
# the run. A run config changes it per step: steps: {train_sft: {retry: {max_retries: 5, delay: 30, backoff: 2}}}
# (the Kubernetes orchestrator retries the step's Job and ignores delay and backoff).
RETRY = StepRetryConfig(max_retries=2, delay=0, backoff=0)
(train_sft, train_reward, train_dpo, evaluate_base, evaluate, merge, score_merged, export_gguf, export_gptq,
 export_awq) = (s.with_options(retry=RETRY) for s in (train_sft, train_reward, train_dpo, evaluate_base, evaluate, merge,
                                                     score_merged, export_gguf, export_gptq, export_awq))
RETRIED_STEPS = ("train_sft", "train_reward", "train_dpo", "evaluate_base", "evaluate", "merge", "score_merged",
                 "export_gguf", "export_gptq", "export_awq")


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
    # The base's scores get a step of their own, keyed on the base, the eval rows (their own content-hashed
    # artifact: editing training rows keeps it cached) and the settings that can change them, so a retrain
    # (the weekly schedule) gets them from the cache. With sft.method auto the 4-bit choice is made later, in
    # train_sft: `evaluate` scores the base again should it turn out to be qlora.
    rows = eval_rows(task_data, after=["data_gate"])
    base_scores = evaluate_base(base, rows, base_settings(config.evaluate), config.sft.method == "qlora",
                                general_text)
    sft_adapter, _ = train_sft(base, task_data, config.sft, config.data.max_tokens, after=["data_gate", "plan"])
    final = sft_adapter
    dpo_adapter = None
    reward_model = None
    if config.reward_model.enabled:  # RLHF: a reward model on DPO's pairs, for dpo.loss_type rloo | grpo
        dpo = config.dpo
        reward_model = train_reward(base, sft_adapter, task_data, preference_data, config.reward_model,
                                    mine_mistakes=dpo.mine_mistakes, min_margin=dpo.min_margin,
                                    mining_batch_size=dpo.mining_batch_size, metric=config.evaluate.metric)
    if config.dpo.enabled:
        dpo_adapter, _ = train_dpo(base, sft_adapter, task_data, preference_data, config.dpo,
                                   metric=config.evaluate.metric,  # mining (and RL's task_metric) scores by it
                                   reward_model=reward_model)
        final = dpo_adapter
    # The final model's MMLU / GSM8K / perplexity are measured once, on the merged weights (score_merged), where
    # that model is the final adapter merged; the evaluation then leaves them out.
    evaluation, _ = evaluate(base, sft_adapter, dpo_adapter, task_data, config.evaluate, general_text, base_scores,
                             final_on_merged=scored_on_merged(config))
    # The model card carries the lineage (data hash, adapters, config) and the evaluation table.
    training = {"sft": config.sft.model_dump(mode="json"), "dpo": config.dpo.model_dump(mode="json")}
    merged = merge(base, final, config.merge, evaluation, data_sha256, training)
    # The exports take of `evaluate` only what they check with, so its other knobs (bootstrap_resamples)
    # re-run the evaluation and the promotion, not the exports.
    checks = ExportChecks.of(config.evaluate, config.export)
    # The merged model is scored once, and every export is judged against that reference.
    reference = score_merged(merged, task_data, checks, config.export.check_rows, general_text)
    lora = {"adapter": final, "merge_config": config.merge} if config.export.lora_adapters else {}  # GGUF LoRA adapters too
    gguf = export_gguf(merged, task_data, config.export, checks, reference, general_text, **lora)
    # One step per format: a failed quantization fails only its own step, the others stay cached.
    q = (merged, task_data, config.quantize, config.export, checks, reference, general_text)
    gptq = export_gptq(*q) if "gptq" in config.quantize.methods else None
    awq = export_awq(*q) if "awq" in config.quantize.methods else None
    promote(evaluation, gguf, config.promote, gptq_export=gptq, awq_export=awq)
