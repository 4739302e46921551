"""Config errors fail at load time with the key, the value and the fix, before any model loads."""

import pytest
import yaml

from tuneline.config import ConfigError, TunelineConfig, deep_merge, load
from tuneline.paths import PROJECT_ROOT


def _write(tmp_path, config: dict):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    return p


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml", "full.yaml", "gemma3-270m.yaml"])
def test_shipped_configs_load(name):
    cfg = load(PROJECT_ROOT / "configs" / name)
    assert isinstance(cfg, TunelineConfig)


def test_unknown_key_names_key_value_and_suggestion(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"sft": {"learning_rat": 0.1}}))
    msg = str(e.value)
    assert "learning_rat" in msg and "0.1" in msg and "did you mean 'learning_rate'" in msg
    assert str(tmp_path / "run.yaml") in msg


def test_bad_value_names_the_key_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"sft": {"method": "lorra"}}))
    msg = str(e.value)
    assert "sft.method" in msg and "'lorra'" in msg and "lora" in msg


def test_gguf_type_typo_suggests(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"export": {"gguf_types": ["f16", "Q8"]}}))
    assert "Q8" in str(e.value) and "did you mean" in str(e.value)


def test_prompt_template_needs_text_slot(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"data": {"prompt_template": "Classify:"}}))
    assert "{text}" in str(e.value)


def test_default_yaml_mirrors_model_defaults_for_every_section():
    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "default.yaml").read_text())["parameters"]["config"]
    assert set(raw) == set(TunelineConfig.model_fields)


def test_default_yaml_equals_the_model_defaults():
    """configs/full.yaml overrides only evaluation: the rest must be what default.yaml says."""
    assert load(PROJECT_ROOT / "configs" / "default.yaml") == TunelineConfig()


def test_export_gate_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"export": {"max_perplexity_increase": {"Q8": 0.01}}}))
    assert "max_perplexity_increase" in str(e.value) and "Q8" in str(e.value) and "did you mean" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load(_write(tmp_path, {"export": {"gguf_types": ["f16", "auto"], "auto_types": []}}))
    assert "auto_types is empty" in str(e.value)
    limits = load(_write(tmp_path, {"export": {"max_perplexity_increase": {"default": 0.1, "q6_k": 0.02}}})).export.ppl_limits()
    assert limits == {"Q6_K": 0.02, "*": 0.1}


def test_deep_merge_semantics():
    """Later wins: mappings merge key by key, lists and scalars are replaced whole; the inputs stay as they were."""
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_overrides_set_dotted_keys_with_yaml_values():
    cfg = load(PROJECT_ROOT / "configs" / "tiny.yaml",
               ["sft.learning_rate=5e-4", "data.rows_per_label=8", "evaluate.mmlu=null", "sft.target_modules=[q_proj]",
                "export.max_perplexity_increase.Q6_K=0.01"])
    assert (cfg.sft.learning_rate, cfg.data.rows_per_label, cfg.evaluate.mmlu) == (5e-4, 8, None)
    assert cfg.sft.target_modules == ["q_proj"] and cfg.export.max_perplexity_increase["Q6_K"] == 0.01
    assert cfg.sft.epochs == 1  # the file's other keys stay


@pytest.mark.parametrize("override,words", [
    ("sft.learning_rte=0.1", ["sft.learning_rte=0.1: unknown key 'learning_rte' in sft; "
                              "did you mean 'learning_rate'?"]),
    ("evaluate.mmlu.subjectz=[x]", ["unknown key 'subjectz' in evaluate.mmlu", "did you mean 'subjects'"]),
    ("sftt.epochs=1", ["unknown key 'sftt' in parameters.config", "did you mean 'sft'"]),
    ("sft.learning_rate=-1", ["sft.learning_rate=-1: Input should be greater than 0"]),
    ("sft.method=lorra", ["sft.method=lorra:", "'lora'"]),
    ("sft.method=prefix_tuning", ["sft.method=prefix_tuning:", "sft.padding_free: false"]),
    ("sft.learning_rate", ["an override is key=value"]),
    ("sft.target_modules=[q_proj", ["sft.target_modules=[q_proj: not a YAML value"]),
])
def test_bad_overrides_name_the_key_the_value_and_the_fix(override, words):
    with pytest.raises(ConfigError) as e:
        load(PROJECT_ROOT / "configs" / "tiny.yaml", [override])
    for w in words:
        assert w in str(e.value)


def test_unreadable_files_fail_in_one_line(tmp_path):
    bad, listed = tmp_path / "bad.yaml", tmp_path / "list.yaml"
    bad.write_text("parameters: {config: [\n")
    listed.write_text("- a list\n")
    for path, words in [(tmp_path / "missing.yaml", "no such file"), (bad, "not valid YAML"),
                        (listed, "must be a mapping")]:
        with pytest.raises(ConfigError) as e:
            load(path)
        assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)
