"""What strict loading keeps working: YAML numbers without a dot, every scheduler name, step retry settings."""

from typing import get_args

import pytest
from transformers import SchedulerType

from tuneline.config import ConfigError, LRScheduler, load, read_run
from tuneline.paths import PROJECT_ROOT

TINY = PROJECT_ROOT / "configs" / "tiny.yaml"


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    cfg = load(TINY, ["sft.learning_rate=5e-4", "dpo.learning_rate=1E-5", "sft.epochs=2"])
    assert (cfg.sft.learning_rate, cfg.dpo.learning_rate, cfg.sft.epochs) == (5e-4, 1e-5, 2.0)
    f = tmp_path / "run.yaml"
    f.write_text("parameters:\n  config:\n    sft: {learning_rate: 3e-4, warmup_ratio: 0}\n")
    assert load(f).sft.learning_rate == 3e-4


def test_every_scheduler_a_config_accepts_is_one_transformers_has():
    assert set(get_args(LRScheduler)) <= {s.value for s in SchedulerType}


def test_a_valid_retry_policy_passes_and_merges(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("parameters:\n  config: {}\nsteps:\n  train_sft:\n    retry: {max_retries: 3, delay: 10, backoff: 2}\n")
    load(f)
    assert read_run([f])["steps"]["train_sft"]["retry"]["backoff"] == 2


def test_explicit_empty_config_means_every_default(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("parameters:\n  config: {}\n")
    assert load(f).sft.method == "lora"
    f.write_text("parameters:\n  config:\n")
    with pytest.raises(ConfigError, match="config: {}"):
        load(f)
