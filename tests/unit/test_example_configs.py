"""The worked configs (configs/default.yaml and every file in configs/examples/) pass `tuneline config check`
as the command runs it, name data files that are shipped, and are each shown in docs/tasks.md.

    .venv/bin/pytest -q tests/unit/test_example_configs.py

A config check loads no model and reads no data, so a worked config whose file is missing would pass it and
fail only when run: the file check here catches that. Nothing here reads the data or loads a model.
"""

import warnings
from pathlib import Path

import pytest

from tuneline.cli import main
from tuneline.config import TunelineConfig, load, resolve
from tuneline.paths import PROJECT_ROOT

EXAMPLES = sorted((PROJECT_ROOT / "configs" / "examples").glob("*.yaml"))
CONFIGS = [PROJECT_ROOT / "configs" / "default.yaml", *EXAMPLES]
IDS = [str(p.relative_to(PROJECT_ROOT)) for p in CONFIGS]
TASKS_DOC = PROJECT_ROOT / "docs" / "tasks.md"


def data_files(cfg: TunelineConfig) -> dict[str, str]:
    """Every data file a config reads, by its key (unset optional ones left out)."""
    d = cfg.data
    named = {"data.train_file": d.train_file, "data.test_file": d.test_file, "data.labels_file": d.labels_file,
             "data.preference.file": d.preference.file if d.preference else None,
             "data.general_mix.file": d.general_mix.file if d.general_mix else None,
             "evaluate.perplexity.file": cfg.evaluate.perplexity.file if cfg.evaluate.perplexity else None}
    for t in d.tasks or []:  # multi-task: each task's files (the top-level ones are not read)
        named |= {f"data.tasks.{t.name}.{k}": getattr(t, k) for k in ("train_file", "test_file", "labels_file")}
    return {key: value for key, value in named.items() if value}


def test_there_are_examples():
    assert len(EXAMPLES) >= 4, f"configs/examples/ holds {[p.name for p in EXAMPLES]}: the worked configs are gone"


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_check_passes(path: Path, capsys):
    rel = str(path.relative_to(PROJECT_ROOT))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a worked config must not teach a deprecated key
        rc = main(["config", "check", rel])
    out, err = capsys.readouterr()
    assert rc == 0, f"tuneline config check {rel} failed:\n{err}"
    assert out.startswith(f"{rel}: ok")


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_data_files_are_shipped(path: Path):
    files = data_files(load(path))
    assert "data.train_file" in files
    missing = {key: value for key, value in files.items() if not resolve(value).exists()}
    assert not missing, f"{path.name} names data files that are not in the project: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_each_config_is_shown_in_the_task_docs(path: Path):
    rel = str(path.relative_to(PROJECT_ROOT))
    assert f"`{rel}`" in TASKS_DOC.read_text(encoding="utf-8"), f"docs/tasks.md does not show {rel}"
