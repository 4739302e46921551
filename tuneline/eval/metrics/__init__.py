"""Local `evaluate` metric scripts, loaded by absolute path so nothing is fetched from the hub."""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
ROUGE_SCRIPT = METRICS_DIR / "rouge" / "rouge.py"
