"""Shared test setup: offline by construction, the tiny model, and an isolated ZenML store.

    make test           # or: .venv/bin/pytest -q tests

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

from tuneline.base_model import BaseModelRef, prepare  # noqa: E402
from tuneline.config import BaseModelConfig, TunelineConfig, load  # noqa: E402
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
    from tuneline.base_model import load_tokenizer

    return load_tokenizer(tiny_ref)


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg, tiny_tok):
    from tuneline.data import validate

    return validate(tiny_cfg.data, tiny_tok)


@pytest.fixture()
def isolated_checkpoints(tmp_path, monkeypatch) -> Path:
    import tuneline.training as training

    monkeypatch.setattr(training, "CHECKPOINT_ROOT", tmp_path / "ckpt")
    return tmp_path / "ckpt"
