"""Config errors fail at load time with the key, the value and the fix, before any model loads."""

import pytest
import yaml

from tuneline.config import TunelineConfig, load
from tuneline.paths import PROJECT_ROOT


def _write(tmp_path, config: dict):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    return p


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml", "full.yaml"])
def test_shipped_configs_load(name):
    cfg = load(PROJECT_ROOT / "configs" / name)
    assert isinstance(cfg, TunelineConfig)


def test_unknown_key_names_key_value_and_suggestion(tmp_path):
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"sft": {"learning_rat": 0.1}}))
    msg = str(e.value)
    assert "learning_rat" in msg and "0.1" in msg and "did you mean 'learning_rate'" in msg
    assert str(tmp_path / "run.yaml") in msg


def test_bad_value_names_the_key_path(tmp_path):
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"sft": {"method": "lorra"}}))
    msg = str(e.value)
    assert "sft.method" in msg and "'lorra'" in msg and "lora" in msg


def test_gguf_type_typo_suggests(tmp_path):
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"export": {"gguf_types": ["f16", "Q8"]}}))
    assert "Q8" in str(e.value) and "did you mean" in str(e.value)


def test_prompt_template_needs_text_slot(tmp_path):
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"data": {"prompt_template": "Classify:"}}))
    assert "{text}" in str(e.value)


def test_default_yaml_mirrors_model_defaults_for_every_section():
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "default.yaml").read_text())["parameters"]["config"]
    assert set(raw) == set(TunelineConfig.model_fields)


def test_default_yaml_equals_the_model_defaults():
    """configs/full.yaml overrides only evaluation: the rest must be what default.yaml says."""
    assert load(PROJECT_ROOT / "configs" / "default.yaml") == TunelineConfig()


def test_export_gate_keys_are_checked(tmp_path):
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"export": {"max_perplexity_increase": {"Q8": 0.01}}}))
    assert "max_perplexity_increase" in str(e.value) and "Q8" in str(e.value) and "did you mean" in str(e.value)
    with pytest.raises(SystemExit) as e:
        load(_write(tmp_path, {"export": {"gguf_types": ["f16", "auto"], "auto_types": []}}))
    assert "auto_types is empty" in str(e.value)
    limits = load(_write(tmp_path, {"export": {"max_perplexity_increase": {"default": 0.1, "q6_k": 0.02}}})).export.ppl_limits()
    assert limits == {"Q6_K": 0.02, "*": 0.1}
