"""What ZenML costs: a config through `zenml pipeline run` against the same step code in one plain process.

    .venv/bin/python bench/pipeline_overhead.py                      # configs/tiny.yaml, about 4 minutes
    .venv/bin/python bench/pipeline_overhead.py --config configs/tiny.yaml --json out.json

Three timings, each a fresh process on a fresh ZenML store with fresh training checkpoints:
1. zenml: `zenml pipeline run pipelines.finetune.finetune -c CONFIG` (every step runs);
2. cached: the same command again (every step but the never-cached promotion comes from the cache);
3. plain: the pipeline's body in one Python process with ZENML_RUN_SINGLE_STEPS_WITHOUT_STACK=true, so each
   step call runs its function directly: the same tuneline calls, with no orchestration, no artifact store, no
   materializers and no metadata (the two ZenML calls the steps make without a pipeline are stubbed).
Prints the zenml/plain ratio (goal <= 1.10) and the cached re-run's wall time (goal <= 15 s). Run it on an idle
machine: the ratio compares two runs made minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(p.stdout + p.stderr)[-4000:]}")
    return seconds


def _env(store: Path) -> dict:
    """A fresh ZenML store and fresh checkpoints: nothing cached or resumed from an earlier run."""
    return os.environ | {"ZENML_CONFIG_PATH": str(store / "zen"), "TUNELINE_CHECKPOINTS": str(store / "ckpt"),
                         "ZENML_ANALYTICS_OPT_IN": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "HF_DATASETS_OFFLINE": "1"}


def plain(config: str) -> None:
    """The pipeline body with every step run as a plain function call (see the module docstring)."""
    from types import SimpleNamespace

    os.environ["ZENML_RUN_SINGLE_STEPS_WITHOUT_STACK"] = "true"
    import steps._metadata
    import steps._cards
    import steps._tracking
    import steps.promote
    from pipelines.finetune import finetune
    from tuneline.config import load

    # Outside a pipeline run a step has no context: no ZenML model, no tracker, nowhere to log metadata.
    context = SimpleNamespace(model=None, step_run=SimpleNamespace(config=SimpleNamespace(experiment_tracker=None)))
    for module in (steps._cards, steps._tracking, steps.promote):
        module.get_step_context = lambda: context
    steps._metadata.log_metadata = lambda *args, **kwargs: None
    finetune.entrypoint(load(ROOT / config))


def measure(config: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="tuneline-overhead-") as tmp:
        zen, bare = Path(tmp) / "zenml", Path(tmp) / "plain"
        env = _env(zen)
        _timed([str(BIN / "zenml"), "init"], env)
        run = [str(BIN / "zenml"), "pipeline", "run", "pipelines.finetune.finetune", "-c", config]
        first = _timed(run, env)
        cached = _timed(run, env)
        direct = _timed([sys.executable, __file__, "--plain", "--config", config], _env(bare))
    return {"config": config, "zenml_s": round(first, 1), "cached_rerun_s": round(cached, 1),
            "plain_s": round(direct, 1), "ratio": round(first / direct, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--plain", action="store_true", help="(internal) the plain-process run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.plain:
        plain(args.config)
        return 0
    r = measure(args.config)
    print(f"{r['config']}: zenml pipeline run {r['zenml_s']:.1f} s, plain process {r['plain_s']:.1f} s, "
          f"ratio {r['ratio']:.2f} (goal <= 1.10); fully cached re-run {r['cached_rerun_s']:.1f} s (goal <= 15 s)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
