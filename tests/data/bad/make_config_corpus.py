"""Write the bad run configs and validation inputs that tests/integration/test_bad_input_corpus.py runs through
the `tuneline` CLI (config/, validation/ and eval_text/ next to this script), with expect.json: file -> the text a clear
error must contain (the key or file it names).

    .venv/bin/python tests/data/bad/make_config_corpus.py      # rewrites config/, validation/, eval_text/

Every config here is wrong in one way; the comment on each line says how. Data files (the reader's corpus)
are written by make_corpus.py.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def run(body: str) -> bytes:
    """A run config with `body` (YAML, indented under parameters.config)."""
    inner = "".join(f"    {line}\n" for line in body.strip("\n").splitlines())
    return f"parameters:\n  config:\n{inner}".encode()


# name -> (file bytes, what the error must name)
CONFIGS: dict[str, tuple[bytes, str]] = {
    # the file itself
    "yaml_syntax.yaml": (b"parameters:\n  config:\n    sft: {r: 8\n", "not valid YAML"),
    "tab_indent.yaml": (b"parameters:\n\tconfig: {}\n", "not valid YAML"),
    "unclosed_quote.yaml": (b'parameters:\n  config:\n    data: {train_file: "a.csv}\n', "not valid YAML"),
    "top_level_list.yaml": (b"- parameters\n- config\n", "must be a mapping"),
    "top_level_scalar.yaml": (b"hello\n", "must be a mapping"),
    "empty.yaml": (b"", "empty"),
    "comments_only.yaml": (b"# nothing but a comment\n", "empty"),
    "utf16.yaml": ("parameters:\n  config: {}\n".encode("utf-16"), "UTF-16"),
    "latin1.yaml": (b"parameters:\n  config:\n    data: {prompt_template: 'caf\xe9 {text}'}\n", "not UTF-8"),
    "nul_bytes.yaml": (b"parameters:\n  config: {}\n\x00\x00\x00", "not valid YAML"),
    "python_tag.yaml": (b"parameters: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "complex_key.yaml": (b"? [a, b]\n: 1\n", "plain name"),
    "duplicate_top_key.yaml": (b"parameters: {config: {}}\nparameters: {config: {}}\n", "twice"),
    "duplicate_section.yaml": (run("sft: {r: 8}\nsft: {r: 16}"), "twice"),
    "duplicate_key.yaml": (run("sft:\n  r: 8\n  r: 16"), "'r' is given twice"),
    # the layout ZenML expects
    "parameters_list.yaml": (b"parameters: [1, 2]\n", "parameters must be a mapping"),
    "parameters_scalar.yaml": (b"parameters: 5\n", "parameters must be a mapping"),
    "parameters_null.yaml": (b"parameters:\n", "parameters must be a mapping"),
    "config_list.yaml": (b"parameters:\n  config: [sft, dpo]\n", "parameters.config must be a mapping"),
    "config_null.yaml": (b"parameters:\n  config:\n", "parameters.config must be a mapping"),
    "config_string.yaml": (b"parameters:\n  config: default\n", "parameters.config must be a mapping"),
    "no_wrapper.yaml": (b"sft:\n  r: 8\n", "under parameters: config:"),
    "no_parameters.yaml": (b"enable_cache: false\n", "no parameters.config"),
    "parameters_without_config.yaml": (b"parameters:\n  other: 1\n", "no parameters.config"),
    "section_scalar.yaml": (run("sft: 5"), "sft"),
    "unknown_section.yaml": (run("sftt: {r: 8}"), "sftt"),
    "unknown_key.yaml": (run("sft: {rr: 8}"), "rr"),
    # values
    "max_steps_negative.yaml": (run("sft: {max_steps: -7}"), "sft.max_steps"),
    "max_steps_zero.yaml": (run("sft: {max_steps: 0}"), "max_steps"),
    "dpo_max_steps_negative.yaml": (run("dpo: {max_steps: -3}"), "dpo.max_steps"),
    "epochs_inf.yaml": (run("sft: {epochs: .inf}"), "sft.epochs"),
    "epochs_nan.yaml": (run("sft: {epochs: .nan}"), "sft.epochs"),
    "epochs_zero.yaml": (run("sft: {epochs: 0}"), "sft.epochs"),
    "epochs_huge.yaml": (run("sft: {epochs: 1e9}"), "sft.epochs"),
    "dpo_epochs_inf.yaml": (run("dpo: {epochs: .inf}"), "dpo.epochs"),
    "rank_huge.yaml": (run("sft: {r: 1000000000000}"), "sft.r"),
    "rank_quoted.yaml": (run('sft: {r: "8"}'), "sft.r"),
    "rank_float.yaml": (run("sft: {r: 8.5}"), "sft.r"),
    "rank_bool.yaml": (run("sft: {r: true}"), "sft.r"),
    "flag_quoted_yes.yaml": (run('sft: {padding_free: "yes"}'), "sft.padding_free"),
    "flag_number.yaml": (run("sft: {gradient_checkpointing: 1}"), "sft.gradient_checkpointing"),
    "seed_quoted.yaml": (run('sft: {seed: "0"}'), "sft.seed"),
    "bf16_yes.yaml": (run("sft: {bf16: yes}"), "sft.bf16"),
    "learning_rate_text.yaml": (run("sft: {learning_rate: fast}"), "sft.learning_rate"),
    "learning_rate_negative.yaml": (run("sft: {learning_rate: -1e-3}"), "sft.learning_rate"),
    "learning_rate_huge.yaml": (run("sft: {learning_rate: 5}"), "sft.learning_rate"),
    "lr_scheduler_unknown.yaml": (run("sft: {lr_scheduler: bogus}"), "sft.lr_scheduler"),
    "dpo_lr_scheduler_unknown.yaml": (run("dpo: {lr_scheduler: cosine_annealing}"), "dpo.lr_scheduler"),
    "method_typo.yaml": (run("sft: {method: qlorra}"), "sft.method"),
    "warmup_over_one.yaml": (run("sft: {warmup_ratio: 1.5}"), "sft.warmup_ratio"),
    "batch_zero.yaml": (run("sft: {batch_size: 0}"), "sft.batch_size"),
    "eval_steps_zero.yaml": (run("sft: {eval_steps: 0}"), "sft.eval_steps"),
    "target_modules_number.yaml": (run("sft: {target_modules: 5}"), "sft.target_modules"),
    "top_layers_ia3.yaml": (run("sft: {method: ia3, top_layers: 2}"), "top_layers"),
    "prefix_padding_free.yaml": (run("sft: {method: prefix_tuning, padding_free: true}\ndpo: {enabled: false}"),
                                 "padding_free"),
    "xlora_one_expert.yaml": (run("sft: {method: xlora, xlora_experts: [a]}\ndpo: {enabled: false}"), "xlora_experts"),
    "experts_without_xlora.yaml": (run("sft: {xlora_experts: [a, b]}"), "xlora_experts"),
    "dpo_after_adalora.yaml": (run("sft: {method: adalora}"), "dpo.enabled"),
    "dpo_loss_unknown.yaml": (run("dpo: {loss_type: ppo}"), "dpo.loss_type"),
    "dpo_beta_negative.yaml": (run("dpo: {beta: -0.1}"), "dpo.beta"),
    "orpo_sft_weight.yaml": (run("dpo: {loss_type: orpo, sft_weight: 1.0}"), "sft_weight"),
    "dpo_no_pairs.yaml": (run("dpo: {mine_mistakes: false}"), "data.preference"),
    "mmlu_subject_unknown.yaml": (run("evaluate: {mmlu: {subjects: [marketting]}}"), "marketing"),
    "mmlu_subjects_string.yaml": (run("evaluate: {mmlu: {subjects: marketing}}"), "subjects"),
    "mmlu_fewshot_too_many.yaml": (run("evaluate: {mmlu: {num_fewshot: 9}}"), "num_fewshot"),
    "metric_unknown.yaml": (run("evaluate: {metric: bleu}"), "evaluate.metric"),
    "bootstrap_too_few.yaml": (run("evaluate: {bootstrap_resamples: 10}"), "bootstrap_resamples"),
    "perplexity_rows_one.yaml": (run("evaluate: {perplexity: {rows: 1}}"), "rows"),
    "gguf_first_quantized.yaml": (run("export: {gguf_types: [Q4_K_M]}"), "gguf_types"),
    "gguf_type_unknown.yaml": (run("export: {gguf_types: [f16, Q9_K]}"), "Q9_K"),
    "gguf_auto_no_types.yaml": (run("export: {gguf_types: [f16, auto], auto_types: []}"), "auto_types"),
    "accuracy_drop_over_one.yaml": (run("export: {max_accuracy_drop: 2}"), "max_accuracy_drop"),
    "ppl_limit_negative.yaml": (run("export: {max_perplexity_increase: {Q8_0: -1}}"), "max_perplexity_increase"),
    "merge_without_adapters.yaml": (run("merge: {combination: ties}"), "merge.adapters"),
    "merge_weights_mismatch.yaml": (run("merge: {combination: linear, adapters: [a], weights: [1, 2, 3]}"), "weights"),
    "merge_density_zero.yaml": (run("merge: {density: 0}"), "merge.density"),
    "merge_dtype_unknown.yaml": (run("merge: {dtype: int8}"), "merge.dtype"),
    "quantize_twice.yaml": (run("quantize: {methods: [gptq, gptq]}"), "methods"),
    "quantize_group_size.yaml": (run("quantize: {group_size: 100}"), "group_size"),
    "promote_stage_unknown.yaml": (run("promote: {stage: prod}"), "promote.stage"),
    "data_shape_unknown.yaml": (run("data: {shape: csv}"), "data.shape"),
    "data_max_tokens_small.yaml": (run("data: {max_tokens: 2}"), "data.max_tokens"),
    "data_policy_unknown.yaml": (run("data: {checks: {duplicate: delete}}"), "duplicate"),
    "data_fraction_over_one.yaml": (run("data: {gate: {max_rejected_fraction: 1.5}}"), "max_rejected_fraction"),
    "data_two_samples.yaml": (run("data: {train_rows: 10, rows_per_label: 4}"), "train_rows"),
    "template_without_text.yaml": (run("data: {prompt_template: 'Classify this'}"), "prompt_template"),
    "tiny_zero_layers.yaml": (run("base_model: {tiny: {layers: 0}}"), "layers"),
    # paths into the system
    "cache_dir_etc.yaml": (run("base_model: {cache_dir: /etc}"), "base_model.cache_dir"),
    "cache_dir_root.yaml": (run("base_model: {cache_dir: /}"), "base_model.cache_dir"),
    "train_file_passwd.yaml": (run("data: {train_file: /etc/passwd}"), "data.train_file"),
    "train_file_escapes.yaml": (run("data: {train_file: ../../../../../../etc/shadow}"), "data.train_file"),
    "labels_file_proc.yaml": (run("data: {labels_file: /proc/cpuinfo}"), "data.labels_file"),
    "perplexity_file_etc.yaml": (run("evaluate: {perplexity: {file: /etc/hosts}}"), "evaluate.perplexity.file"),
    "base_model_usr.yaml": (run("base_model: {source: /usr/lib}"), "base_model.source"),
    # step settings
    "steps_list.yaml": (run("sft: {r: 8}") + b"steps: [train_sft]\n", "steps must be a mapping"),
    "retry_zero.yaml": (run("sft: {r: 8}") + b"steps:\n  train_sft:\n    retry: {max_retries: 0}\n",
                        "steps.train_sft.retry.max_retries"),
    "retry_delay_text.yaml": (run("sft: {r: 8}") + b"steps:\n  evaluate:\n    retry: {delay: soon}\n",
                              "steps.evaluate.retry.delay"),
    "retry_unknown_key.yaml": (run("sft: {r: 8}") + b"steps:\n  merge:\n    retry: {tries: 3}\n", "tries"),
}

# Inputs that `tuneline validate configs/tiny.yaml data.KEY=FILE` reads (validation/): name -> (bytes, error).
VALIDATION: dict[str, tuple[bytes, str]] = {
    "labels_not_a_list.json": (b'{"greet": 1}', "labels_not_a_list.json"),
    "labels_empty.json": (b"[]", "labels_empty.json"),
    "labels_bad_json.json": (b'["greet", ', "labels_bad_json.json"),
    "labels_utf16.json": ('["greet"]'.encode("utf-16"), "labels_utf16.json"),
    "labels_numbers.json": (b"[1, 2, 3]", "labels_numbers.json"),
    "labels_duplicate.json": (b'["greet", "greet", "farewell"]', "labels_duplicate.json"),
    "train_unsupported.txt": (b"text: hello\nlabel: greet\n", "train_unsupported.txt"),
    "train_header_only.csv": (b"text,label\n", "train_header_only.csv"),
}


def pair(i: int) -> bytes:
    return json.dumps({"prompt": f"Question {i}?", "chosen": f"A long helpful answer number {i}.",
                       "rejected": "No."}).encode()


# General-text files as evaluate.perplexity.file names them (prompt/chosen/rejected rows), each with bad lines
# next to good ones; read as the pipeline reads a source (eval_text/): name -> (bytes, the error if it fails).
EVAL_TEXTS: dict[str, tuple[bytes, str]] = {
    "json_list_line.jsonl": (pair(1) + b"\n[1, 2, 3]\n" + pair(3) + b"\n", "json_list_line.jsonl"),
    "invalid_utf8_line.jsonl": (pair(1) + b'\n{"prompt": "q", "chosen": "caf\xe9", "rejected": "r"}\n' + pair(3) + b"\n",
                                "invalid_utf8_line.jsonl"),
    "blank_line.jsonl": (pair(1) + b"\n\n" + pair(3) + b"\n", "blank_line.jsonl"),
    "chosen_missing.jsonl": (pair(1) + b'\n{"prompt": "q", "rejected": "r"}\n' + pair(3) + b"\n", "chosen_missing.jsonl"),
    "chosen_number.jsonl": (pair(1) + b'\n{"prompt": "q", "chosen": 5, "rejected": "r"}\n' + pair(3) + b"\n",
                            "chosen_number.jsonl"),
    "all_lines_bad.jsonl": (b"[1]\n2\nnull\n", "all_lines_bad.jsonl"),
    "utf16.jsonl": (pair(1).decode().encode("utf-16"), "utf16.jsonl"),
    # 57 KB that expands to one 60 MB line: rejected as line_too_large, never held whole in memory
    "gzip_bomb.jsonl.gz": (gzip.compress(pair(1) + b'\n{"prompt": "' + b"a" * 60_000_000 + b'"}\n' + pair(3) + b"\n",
                                         9, mtime=0), "gzip_bomb.jsonl.gz"),
}


def main(out: Path) -> None:
    for sub, cases in (("config", CONFIGS), ("validation", VALIDATION), ("eval_text", EVAL_TEXTS)):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for name, (data, _) in cases.items():
            (out / sub / name).write_bytes(data)
        (out / sub / "expect.json").write_text(json.dumps({k: v[1] for k, v in cases.items()}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
