"""Loading the pipeline (what a fully cached re-run does before it finds every step in the cache) imports no
model library: torch, transformers, PEFT, TRL and the rest load inside the steps that run.

    .venv/bin/pytest -q tests/unit/test_pipeline_import.py
"""

import os
import subprocess
import sys

from tuneline.paths import PROJECT_ROOT

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "lm_eval", "great_expectations",
         "mlflow", "gptqmodel", "llama_cpp", "matplotlib")


def test_importing_the_pipeline_loads_no_model_library():
    code = ("import sys, pipelines.finetune; "
            f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True,
                       text=True, timeout=300)
    loaded = [line for line in p.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED []"], p.stdout[-2000:] + p.stderr[-2000:]
