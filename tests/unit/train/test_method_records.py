"""The Method records, target presets, common trainer args and the result's metadata (nothing trains here;
tests/integration/test_methods.py trains every method)."""

from pathlib import Path
from typing import get_args

import pytest

from tuneline.config import FULL_WEIGHT_METHODS, NO_DPO_METHODS, PROMPT_METHODS, DPOConfig, SFTConfig, SFTMethod
from tuneline.train import checkpoints
from tuneline.train.args import TrainResult, trainer_args
from tuneline.train.methods import METHODS, ModelLossSFTTrainer, method_for
from tuneline.train.targets import ATTENTION, MLP, peft_targets, target_names
from tuneline.versions import TRAINING_LIBRARIES, package_versions


def test_every_configurable_method_has_one_record():
    assert set(METHODS) == set(get_args(SFTMethod)) - {"auto"}
    assert method_for(SFTConfig(method="dora")) is METHODS["dora"] is method_for("dora")
    with pytest.raises(ValueError, match="resolve it first"):
        method_for("auto")


def test_record_flags_agree_with_the_config_rules():
    assert {n for n, m in METHODS.items() if m.full_weight} == set(FULL_WEIGHT_METHODS)
    assert {n for n, m in METHODS.items() if not m.dpo_able} == set(NO_DPO_METHODS)
    assert {n for n, m in METHODS.items() if not m.mergeable} == {*PROMPT_METHODS, "xlora", "bottleneck"}
    assert {n for n, m in METHODS.items() if not m.resumable} == {"adalora", "xlora"}
    assert {n for n, m in METHODS.items() if m.trainer is ModelLossSFTTrainer} == {"adalora", "xlora"}
    assert [n for n, m in METHODS.items() if m.quantize_4bit] == ["qlora"]
    assert [type(c).__name__ for c in method_for("adalora").callbacks()] == ["AdaLoraBudget"]
    assert method_for("lora").optimizer_args(SFTConfig()) == {}


def test_target_presets_have_one_home():
    assert target_names("all-linear") == ATTENTION + MLP and target_names("attention") == ATTENTION
    assert target_names(["q_proj", "lm_head"]) == ("q_proj",)
    assert peft_targets(SFTConfig()) == "all-linear"  # PEFT resolves it (never lm_head)
    assert peft_targets(SFTConfig(top_layers=2)) == list(ATTENTION + MLP)
    assert peft_targets(SFTConfig(method="ia3"), named=True) == list(ATTENTION + MLP)
    assert peft_targets(SFTConfig(target_modules="attention")) == list(ATTENTION)
    assert peft_targets(SFTConfig(target_modules=["v_proj"])) == ["v_proj"]


def test_sft_and_dpo_share_the_trainer_args(tmp_path):
    sft, dpo = trainer_args(SFTConfig(), tmp_path), trainer_args(DPOConfig(), tmp_path)
    assert set(sft) == set(dpo)
    # DPO's defaults are the values it always trained with.
    assert (dpo["logging_steps"], dpo["lr_scheduler_type"], dpo["warmup_steps"]) == (2, "cosine", 0.1)
    assert (sft["logging_steps"], sft["lr_scheduler_type"], sft["warmup_steps"]) == (5, "cosine", 0.03)
    assert sft["save_steps"] == checkpoints.SAVE_STEPS and sft["output_dir"] == str(tmp_path)
    assert trainer_args(SFTConfig(bf16="false"), tmp_path)["bf16"] is False


def test_result_metadata_holds_what_makes_the_run_reproducible():
    res = TrainResult(adapter_dir=str(Path("out")), history=[], metrics={"final_loss": 1.5}, seed=3,
                      data_hash="abc", base_sha256="f00")
    meta = res.metadata()
    assert (meta["final_loss"], meta["seed"], meta["data_hash"], meta["base_sha256"]) == (1.5, 3, "abc", "f00")
    assert {f"version_{n}" for n in ("python", *TRAINING_LIBRARIES)} <= set(meta)
    assert meta["version_torch"] == package_versions("torch")["torch"]
    assert package_versions("no-such-package-here") == {"no-such-package-here": None}


def test_gradient_checkpointing_is_each_sections_choice_not_trls_default(tmp_path):
    """TRL's DPOConfig and RewardConfig turn gradient checkpointing on by default: ~1.3x the compute per DPO step
    on the default run, where the activations fit. Every section now says it; DPO's null follows the SFT run."""
    from tuneline.config import RewardModelConfig
    from tuneline.train.dpo import trl_args

    assert trl_args(DPOConfig().after_sft(False), tmp_path).gradient_checkpointing is False
    assert trl_args(DPOConfig().after_sft(True), tmp_path).gradient_checkpointing is True  # auto picked it for SFT
    assert DPOConfig(gradient_checkpointing=False).after_sft(True).gradient_checkpointing is False
    assert trainer_args(RewardModelConfig(), tmp_path)["gradient_checkpointing"] is False
    assert trainer_args(SFTConfig(gradient_checkpointing=True), tmp_path)["gradient_checkpointing"] is True
