"""The `tuneline` command: check, merge and run configs, and run each pipeline stage by hand.

    tuneline config check configs/default.yaml sft.learning_rate=5e-4
    tuneline run configs/default.yaml sft.learning_rate=5e-4 data.rows_per_label=8   # the ZenML pipeline

Every subcommand takes a run config (configs/*.yaml) plus `key=value` overrides: dotted keys under
`parameters.config`, values read as YAML, validated by the same pydantic models as the file (a typo gets
"did you mean"). `tuneline SUBCOMMAND --help` starts with an example. `python -m tuneline.cli` is the same
command (accelerate launch uses it). tuneline never imports ZenML: `run` calls this environment's `zenml`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import get_args

from tuneline.config import OVERRIDE, ConfigError, DataConfig, TunelineConfig, load, write_run
from tuneline.paths import PROJECT_ROOT

PIPELINE = "pipelines.finetune.finetune"
DOTTED = re.compile(r"^\w+(\.[\w-]+)+=")  # sft.learning_rate=...: an override, never an adapter or column name


class UsageError(ValueError):
    """A command line that cannot run as given; the message says what to add or change."""


# --- config ---------------------------------------------------------------------------------------


def config_check(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    print(f"{a.config}: ok")
    for key, value in _flat(cfg.model_dump(mode="json", exclude_defaults=True)):
        print(f"  {key}: {json.dumps(value)}")
    return 0


def _flat(tree: dict, prefix: str = ""):
    """(dotted key, value) for every leaf of a nested mapping."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_merge(a: argparse.Namespace) -> int:
    out = write_run(a.files, a.output, a.overrides)
    print(f"{out}: ok (zenml pipeline run {PIPELINE} -c {out})")
    return 0


# --- stages ---------------------------------------------------------------------------------------


def validate(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    if a.source:
        return _read_source(a, cfg.data)
    from tuneline.data.validate import gate

    v = _validated(cfg, _base(cfg))
    failures = gate(v, cfg.data)
    print(json.dumps({"counts": v.counts, "checks": v.checks, "balance": v.balance, "gate": failures},
                     indent=2, default=str))
    print("data gate: " + ("passed" if not failures else "FAILED\n" + "\n".join(f"  - {f}" for f in failures)))
    return 1 if failures else 0


def _read_source(a: argparse.Namespace, data: DataConfig) -> int:
    """One file (or dir, or hub id) through the reader the pipeline uses per source."""
    from tuneline.data.sources import locate, read_source

    rejected: list[dict] = []
    read = read_source(locate(a.source), rejected, shape=a.shape, columns=_pairs(a.columns, "--columns"),
                       template=data.prompt_template, system_prompt=data.system_prompt)
    print(json.dumps({"source": a.source, "shape": read.shape, "input_rows": read.rows_in,
                      "records": len(read.records), "rejected": len(rejected),
                      "reasons": Counter(r["reason"] for r in rejected)}, indent=2))
    return 0


def _base(cfg: TunelineConfig):
    """The base model ref with data.chat_template resolved, as the pipeline's prepare_base step makes it."""
    from tuneline.model.base import prepare

    return prepare(cfg.base_model).with_template(cfg.data.chat_template)


def _validated(cfg: TunelineConfig, ref):
    """The config's data validated as the pipeline's validate_data step does (MMLU subjects for contamination)."""
    from tuneline.data.validate import validate as validate_data
    from tuneline.model.base import load_tokenizer

    return validate_data(cfg.data, load_tokenizer(ref), cfg.evaluate.mmlu.subjects if cfg.evaluate.mmlu else None,
                         dpo=cfg.dpo.data_use())


def _split(task, name: str) -> list[dict]:
    return task[task.split == name].to_dict("records")


def carried_length(task) -> int:
    """data.max_new_tokens as the data step resolved it for this task table (tuneline.data.generation)."""
    from tuneline.data.generation import carried_length as carried

    return carried(task)


def plan(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    from tuneline.model.base import prepare
    from tuneline.train.plan import plan_report

    html, meta = plan_report(prepare(cfg.base_model), cfg.sft, cfg.data.max_tokens, a.gpu_gb, a.headroom)
    if a.html:
        Path(a.html).write_text(html)
    if a.json:
        print(json.dumps(meta, indent=2))
    else:
        print(f"model {cfg.base_model.source}: {meta['model_params']:,} parameters; batch {meta['batch_size']} x "
              f"{meta['seq_len']} tokens, {'bf16 autocast' if meta['bf16'] else 'fp32'}; memory "
              f"{meta['available_gb']:.1f} GB ({meta['memory_source']})\n")
        print(f"{'method':24} {'est. GB':>8} {'fits':>5} {'rel. time/cost':>14}")
        for m, gb in meta["estimated_gb"].items():
            print(f"{m:24} {gb:>8.3f} {'yes' if meta['fits'][m] else 'NO':>5} {meta['relative_time'][m]:>13.2f}x")
        print(f"\nmethod: auto -> {meta['auto_reason']}")
        if cfg.sft.method != "auto" and meta["auto_method"] and cfg.sft.method != meta["auto_method"]:
            print(f"(the config asks for {cfg.sft.method})")
    return 0 if meta["auto_method"] else 1


def train(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    if a.stage == "dpo" and (not a.sft_adapter or a.records):
        raise UsageError("--stage dpo trains on an SFT result with the config's validated data: give "
                         "--sft-adapter DIR and no --records")
    ref, out = _base(cfg), Path(a.out)
    if a.stage == "sft":
        import pandas as pd

        from tuneline.train.sft import train as train_sft

        task = pd.read_parquet(a.records) if a.records else _gated(cfg, ref).task
        res = train_sft(ref, _split(task, "train"), cfg.sft, out, cfg.data.max_tokens,
                        eval_records=_split(task, "eval"))
    else:
        from tuneline.train.dpo import train as train_dpo

        v = _gated(cfg, ref)
        res = train_dpo(ref, a.sft_adapter, cfg.sft.method, _split(v.task, "mining"), v.preferences.to_dict("records"),
                        cfg.dpo, out, carried_length(v.task), cfg.dpo.mining_batch_size, metric=cfg.evaluate.metric)
    print("METRICS " + json.dumps(res.metrics, default=str))
    return 0


def _gated(cfg: TunelineConfig, ref):
    """Validated data that passed the data gate (training stops on it, as in the pipeline)."""
    from tuneline.data.readers import DataError
    from tuneline.data.validate import gate

    v = _validated(cfg, ref)
    failures = gate(v, cfg.data)
    if failures:
        raise DataError("the data gate failed (`tuneline validate` shows the counts):\n"
                        + "\n".join(f"  - {f}" for f in failures))
    return v


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    """`--flag A=B C=D` as {A: B, C: D}."""
    bad = [x for x in items if "=" not in x]
    if bad:
        raise UsageError(f"{flag} takes NAME=VALUE pairs, not {' '.join(bad)}")
    return dict(x.split("=", 1) for x in items)


def evaluate(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    if a.gguf:
        from tuneline.eval.harness import run_gguf_benchmarks

        for name, r in run_gguf_benchmarks(a.gguf, cfg.evaluate).items():
            print(f"{name}: {r.score:.3f} on {r.n} items ({r.seconds:.0f} s)")
        return 0
    adapters = _pairs(a.adapter, "--adapter")
    ref = _base(cfg)
    task = _validated(cfg, ref).task
    rows, length = _split(task, "eval"), carried_length(task)
    if adapters:
        from tuneline.eval.evaluate import evaluate as evaluate_all

        print(json.dumps(evaluate_all(ref, adapters, cfg.sft.method, rows, cfg.evaluate, length).summary(), indent=2))
        return 0
    from tuneline.eval.harness import run_benchmarks
    from tuneline.eval.task import score_task
    from tuneline.model.base import load_model, load_tokenizer

    e, model, tok = cfg.evaluate, load_model(ref).eval(), load_tokenizer(ref)
    r = score_task(model, tok, rows, length, e.batch_size, e.metric)
    print(f"base {r.metric}: {r.score:.3f} on {r.n} rows ({r.seconds:.1f} s); e.g. {r.predictions[:5]}")
    for b in run_benchmarks(model, tok, e).values():
        print(f"base {b.name}: {b.metric}={b.score:.3f} on {b.n} items ({b.seconds:.0f} s)")
    return 0


def merge(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    from tuneline.export.merge import merge as merge_adapter

    out = merge_adapter(_base(cfg), a.adapter_dir, Path(a.out), cfg.merge.dtype, combination=cfg.merge)
    print(f"merged model: {out}")
    return 0


def export(a: argparse.Namespace) -> int:
    cfg = load(a.config, a.overrides)
    from tuneline.export.gate import ExportChecks
    from tuneline.export.gguf import export_gguf
    from tuneline.export.quantize import export_quantized

    task = _validated(cfg, _base(cfg)).task
    rows, out = _split(task, "eval"), Path(a.out)
    checks = ExportChecks.of(cfg.evaluate, cfg.export, carried_length(task))
    if a.format == "gguf":
        res = export_gguf(a.merged_dir, out, rows, cfg.export, checks)
    else:
        res, _ = export_quantized(a.merged_dir, out, a.format, _split(task, "train"), rows, cfg.quantize, cfg.export,
                                  checks)
    files = res.files
    print(f"merged: {res.reference.score:.3f} on {res.reference.n} rows")
    for f in files:
        print(f"{f.qtype}{' (auto)' if f.auto else ''}: {f.size_bytes / 2**20:.1f} MB, {f.score:.3f}, "
              f"ppl {f.perplexity or 0:.3f}, {'passed' if f.passed else 'REJECTED'} ({f.reason}) {f.path}")
    return 0


def run(a: argparse.Namespace) -> int:
    out = write_run(a.files, a.output, a.overrides).resolve()
    zenml = Path(sys.executable).parent / "zenml"
    cmd = [str(zenml), "pipeline", "run", PIPELINE, "-c", str(out)]
    print(f"{a.output}: ok\n$ (cd {PROJECT_ROOT} && {shlex.join(cmd)})", flush=True)
    if a.dry_run:
        return 0
    if not zenml.exists():
        raise UsageError(f"no zenml next to {sys.executable}: install the project (pip install -e .)")
    return subprocess.run(cmd, cwd=PROJECT_ROOT).returncode


# --- the parser -----------------------------------------------------------------------------------


def _command(subs, name: str, func, example: str, about: str, *, files: bool = False, config: bool = True):
    p = subs.add_parser(name, help=about.split("\n")[0], description=f"example:\n  {example}\n\n{about}",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    if files:
        p.add_argument("files", nargs="+", metavar="CONFIG [OVERLAY ...]", help="run configs, later files win")
    elif config:
        p.add_argument("config", help="a run config, e.g. configs/default.yaml")
    p.set_defaults(func=func)
    return p


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted keys under parameters.config, e.g. sft.learning_rate=5e-4")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tuneline", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="example:\n  tuneline run configs/default.yaml sft.learning_rate=5e-4 data.rows_per_label=8\n\n"
                    "Declarative LLM fine-tuning. Each command takes a run config plus key=value overrides\n"
                    "(dotted keys under parameters.config), validated before anything loads.")
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = subs.add_parser("config", help="check or merge run configs", description=(
        "example:\n  tuneline config check configs/default.yaml sft.learning_rate=5e-4\n\n"
        "Check a run config, or merge it with overlays into the one file ZenML takes."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    config_subs = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    _overrides(_command(config_subs, "check", config_check, "tuneline config check configs/tiny.yaml sft.epochs=2",
                        "Validate a run config.\n\nPrints the keys that differ from the defaults."))
    p = _command(config_subs, "merge", config_merge,
                 "tuneline config merge configs/default.yaml configs/env/kubernetes.yaml -o build/kubernetes.yaml",
                 "Merge a run config with overlays into one file.\n\n"
                 "Later files win (mappings merge key by key, lists and scalars are replaced), then the\n"
                 "key=value overrides; the result is validated, then written to OUT for\n"
                 f"`zenml pipeline run {PIPELINE} -c OUT`.", files=True)
    _overrides(p)
    p.add_argument("-o", "--output", required=True, help="where to write the merged run config")

    p = _command(subs, "validate", validate, "tuneline validate configs/default.yaml data.rows_per_label=8",
                 "Validate the configured data and apply the data gate.\n\n"
                 "Prints counts, checks, label balance and the gate's verdict (exit 1 when it fails).\n"
                 "With --source: reads one file as the pipeline reads a source and prints its shape,\n"
                 "record and reject counts, e.g.\n"
                 "  tuneline validate configs/default.yaml --source my.csv --shape alpaca \\\n"
                 "      --columns question=instruction")
    _overrides(p)
    p.add_argument("--source", help="a data file, a directory of them, or a hub dataset id")
    p.add_argument("--shape", default="auto", choices=get_args(DataConfig.model_fields["shape"].annotation))
    p.add_argument("--columns", nargs="+", default=[], metavar="SOURCE=CANONICAL",
                   help="renames before shape detection, as data.columns, e.g. question=instruction")

    p = _command(subs, "plan", plan, "tuneline plan configs/default.yaml --gpu-gb 24",
                 "Plan training memory and the sft.method auto choice.\n\n"
                 "Peak training memory of full / LoRA / QLoRA (with and without gradient checkpointing) from\n"
                 "the base model's config alone, and what sft.method auto picks (exit 1: nothing fits).")
    _overrides(p)
    p.add_argument("--gpu-gb", type=float, help="memory to plan for (default: this GPU, else RAM available)")
    p.add_argument("--headroom", type=float, default=0.85, help="share of the memory the estimate may use")
    p.add_argument("--json", action="store_true", help="print the plan step's metadata as JSON")
    p.add_argument("--html", help="also write the plan step's HTML table (every memory part) here")

    p = _command(subs, "train", train, "tuneline train configs/tiny.yaml --out /tmp/sft-adapter sft.max_steps=10",
                 "Train an SFT or DPO adapter.\n\n"
                 "SFT trains on the validated data (or --records), DPO on --sft-adapter; the result goes to --out.\n"
                 "Prints a `METRICS {json}` line.")
    _overrides(p)
    p.add_argument("--out", required=True, help="the adapter (or full model) dir to write")
    p.add_argument("--stage", choices=["sft", "dpo"], default="sft")
    p.add_argument("--records", help="task rows as Parquet (a task_data artifact) instead of validating the data")
    p.add_argument("--sft-adapter", help="--stage dpo: the SFT adapter dir DPO starts from")

    p = _command(subs, "evaluate", evaluate,
                 "tuneline evaluate configs/default.yaml --adapter sft=/tmp/sft-adapter dpo=/tmp/dpo-adapter",
                 "Evaluate the base model and adapters.\n\n"
                 "Scores the base model and each adapter (in training order; the last is final) on the eval\n"
                 "rows, MMLU, GSM8K and perplexity, with paired bootstrap CIs. Without --adapter: the base\n"
                 "model alone. With --gguf FILE: the configured benchmarks on that GGUF file.")
    _overrides(p)
    p.add_argument("--adapter", nargs="+", default=[], metavar="NAME=DIR", help="candidates, in training order")
    p.add_argument("--gguf", help="a GGUF file: run evaluate.mmlu / evaluate.gsm8k on it through llama.cpp")

    p = _command(subs, "merge", merge, "tuneline merge configs/default.yaml /tmp/dpo-adapter --out /tmp/merged",
                 "Merge an adapter into the base model.\n\n"
                 "Merges it (merge.combination: with merge.adapters first) and save a\n"
                 "full model dir with tokenizer, chat template and model card.")
    p.add_argument("adapter_dir")
    _overrides(p)
    p.add_argument("--out", required=True, help="the merged model dir to write")

    p = _command(subs, "export", export, "tuneline export configs/default.yaml /tmp/merged --out /tmp/gguf",
                 "Export a merged model and check every file.\n\n"
                 "Exports to GGUF (export.gguf_types) or GPTQ / AWQ (quantize.*) and checks each\n"
                 "file against the merged model on the eval rows (export.max_accuracy_drop and\n"
                 "max_perplexity_increase); rejected files are kept and marked.")
    p.add_argument("merged_dir")
    _overrides(p)
    p.add_argument("--out", required=True, help="the export dir to write")
    p.add_argument("--format", choices=["gguf", "gptq", "awq"], default="gguf")

    p = _command(subs, "run", run, "tuneline run configs/default.yaml sft.learning_rate=5e-4 data.rows_per_label=8",
                 "Run the ZenML pipeline on a merged, validated run config.\n\n"
                 "Writes the run config (--output), then runs:\n"
                 f"  zenml pipeline run {PIPELINE} -c OUTPUT\n"
                 "Overlays go after the config (e.g. configs/env/kubernetes.yaml).", files=True)
    _overrides(p)
    p.add_argument("--output", default="build/run.yaml", help="the run config to write (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="write the run config and print the command only")
    return top


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments, with every `key=value` (wherever it stands) moved to `overrides`, in command-line order."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args, extra = p.parse_known_args(argv)
    unknown = [x for x in extra if not OVERRIDE.match(x)]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    given = list(getattr(args, "overrides", [])) + extra
    for name in ("adapter", "columns"):  # NAME=VALUE lists end where a dotted config key starts
        items = getattr(args, name, None) or []
        given += [x for x in items if DOTTED.match(x)]
        setattr(args, name, [x for x in items if not DOTTED.match(x)])
    if hasattr(args, "files"):  # config files and overrides share the positional list
        given = [f for f in args.files if OVERRIDE.match(f)] + given
        args.files = [f for f in args.files if not OVERRIDE.match(f)]
        if not args.files:
            p.error("give a run config first, e.g. configs/default.yaml")
    args.overrides = sorted(given, key=argv.index)  # a key given twice: the later one wins
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from tuneline.data.readers import DataError

    try:
        return args.func(args)
    except (ConfigError, UsageError) as err:
        print(f"tuneline {args.command}: {err}" if isinstance(err, UsageError) else str(err), file=sys.stderr)
        return 2
    except DataError as err:
        print(str(err), file=sys.stderr)
        return 1
    except OSError as err:  # a named input that is a directory, unreadable, or gone: say which, no traceback
        where = err.filename or "an input file"
        print(f"tuneline {args.command}: {where}: {err.strerror or err} (check the path in the config or the "
              "command line)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
