"""Shared test setup: offline by construction, the tiny model, and an isolated ZenML store.

    make test                          # everything (CI runs exactly this)
    make test-fast                     # the unit tier alone: .venv/bin/pytest -q -m unit

Tiers live in directories and get their marker from the directory (see pytest_collection_modifyitems):
tests/unit mirrors the packages of tuneline/ and trains nothing; tests/integration runs the real
trainers, lm-eval, llama.cpp and GPTQModel on the tiny model; tests/pipeline runs the ZenML pipeline;
tests/infra checks manifests, images, the Kubeflow compile and the dashboard.

Any attempt to reach the Hugging Face hub fails loudly (HF_HUB_OFFLINE=1).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh ZenML store (SQLite) per test session, never the user's own.
if "ZENML_CONFIG_PATH" not in os.environ:
    import tempfile

    os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="tuneline-zenml-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tuneline.config import BaseModelConfig, TunelineConfig, load  # noqa: E402
from tuneline.model.base import BaseModelRef, prepare  # noqa: E402
from tuneline.paths import PROJECT_ROOT  # noqa: E402

TINY_YAML = PROJECT_ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_cfg() -> TunelineConfig:
    return load(TINY_YAML)


@pytest.fixture(scope="session")
def tiny_ref() -> BaseModelRef:
    return prepare(BaseModelConfig(source="tiny"))


@pytest.fixture(scope="session")
def tiny_tok(tiny_ref):
    from tuneline.model.base import load_tokenizer

    return load_tokenizer(tiny_ref)


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg, tiny_tok):
    from tuneline.data.validate import validate

    return validate(tiny_cfg.data, tiny_tok)


@pytest.fixture(scope="session")
def bench_module():
    """Imports a script of bench/ by name (bench/ is not a package): bench_module("default_run")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture()
def isolated_checkpoints(tmp_path, monkeypatch) -> Path:
    import tuneline.train.checkpoints as training

    monkeypatch.setattr(training, "CHECKPOINT_ROOT", tmp_path / "ckpt")
    return tmp_path / "ckpt"


TIERS = ("unit", "integration", "pipeline", "infra")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
