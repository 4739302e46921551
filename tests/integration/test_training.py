"""SFT and DPO on the tiny model with the real TRL trainers: loss falls, base stays frozen, adapters reload."""

import pytest
import torch
from peft import PeftModel

from tuneline.config import DPOConfig, SFTConfig
from tuneline.model.base import load_model
from tuneline.train.checkpoints import last_checkpoint
from tuneline.train.dpo import preference_accuracy, user_pairs
from tuneline.train.dpo import train as train_dpo
from tuneline.train.methods import lora_config
from tuneline.train.sft import train as train_sft

SFT = SFTConfig(epochs=4, batch_size=8, learning_rate=5e-3, logging_steps=2)


def _records(tiny_data, split):
    return tiny_data.task[tiny_data.task.split == split].to_dict("records")


def test_padding_free_rows_do_not_see_each_other(tiny_ref):
    """Padding-free batches rely on transformers isolating rows by position ids (cache off)."""
    model = load_model(tiny_ref).eval()
    a, b = torch.randint(10, 1000, (1, 7)), torch.randint(10, 1000, (1, 5))
    with torch.no_grad():
        alone = [model(x, use_cache=False).logits for x in (a, b)]
        pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
        packed = model(torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(packed[:, :7], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed[:, 7:], alone[1], rtol=1e-4, atol=1e-4)


def test_top_layers_restricts_lora_to_the_upper_layers():
    cfg = lora_config(SFTConfig(top_layers=2), num_layers=30)
    assert cfg.layers_to_transform == [28, 29] and "down_proj" in cfg.target_modules


def test_sft_learns_keeps_base_frozen_and_reloads(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    before = {k: v.clone() for k, v in load_model(tiny_ref).state_dict().items()}
    res = train_sft(tiny_ref, _records(tiny_data, "train"), SFT, tmp_path / "sft")
    assert res.metrics["final_loss"] < res.metrics["first_loss"]
    assert res.metrics["tokens_per_second"] > 0 and res.metrics["trainable_params"] < res.metrics["total_params"] / 5
    # The adapter is small: no copy of the base model in it.
    size = sum(p.stat().st_size for p in (tmp_path / "sft").rglob("*.safetensors"))
    assert size < 0.5 * sum(v.numel() * 4 for v in before.values())
    model = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "sft")
    for name, tensor in model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name and key in before:
            assert torch.equal(tensor, before[key]), f"{name} changed"
    ids = torch.tensor([[1, 20, 30, 40]])
    again = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "sft")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)
        assert not torch.allclose(model(ids).logits, load_model(tiny_ref)(ids).logits)
    assert last_checkpoint(next(isolated_checkpoints.glob("sft-*"))) is not None


def test_sft_rerun_resumes_from_checkpoint(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    rows = _records(tiny_data, "train")
    first = train_sft(tiny_ref, rows, SFT, tmp_path / "a")
    second = train_sft(tiny_ref, rows, SFT, tmp_path / "b")
    assert first.metrics["resumed_from"] is None and second.metrics["resumed_from"].endswith(f"checkpoint-{first.metrics['steps']}")


def _assert_reproducible(res, ref, seed: int) -> None:
    """The step metadata of a training result: its metrics plus seed, data hash, base sha256, library versions."""
    meta = res.metadata()
    assert meta["seed"] == seed and len(meta["data_hash"]) == 16 and meta["base_sha256"] == ref.sha256
    assert meta["version_torch"] == torch.__version__ and meta["version_trl"] and meta["version_python"]
    assert meta["final_loss"] == res.metrics["final_loss"]


def test_dpo_starts_from_sft_and_saves_one_adapter(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    sft_res = train_sft(tiny_ref, _records(tiny_data, "train"), SFT, tmp_path / "sft")
    cfg = DPOConfig(batch_size=4, max_length=96, learning_rate=1e-3)
    res = train_dpo(tiny_ref, str(tmp_path / "sft"), "lora", _records(tiny_data, "mining"),
                    tiny_data.preferences.to_dict("records"), cfg, tmp_path / "dpo", max_new_tokens=4)
    _assert_reproducible(sft_res, tiny_ref, SFT.seed)
    _assert_reproducible(res, tiny_ref, cfg.seed)
    assert res.metrics["pairs_mined"] > 0 and res.metrics["pairs_user"] == len(tiny_data.preferences)
    assert not (tmp_path / "dpo" / "ref").exists(), "the frozen reference copy must not be saved"
    sft = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "sft")
    dpo = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "dpo")
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert not torch.allclose(sft(ids).logits, dpo(ids).logits), "DPO changed nothing"


def test_preference_accuracy_prefers_likelier_answer(tiny_ref, tiny_tok, tiny_data):
    model = load_model(tiny_ref)
    pairs = user_pairs(tiny_data.preferences.to_dict("records"))
    swapped = [p.model_copy(update={"chosen": p.rejected, "rejected": p.chosen}) for p in pairs]
    a, b = preference_accuracy(model, tiny_tok, pairs), preference_accuracy(model, tiny_tok, swapped)
    assert a["accuracy"] + b["accuracy"] == 1.0 and abs(a["margin"] + b["margin"]) < 1e-5


def test_qlora_switch_trains_on_a_4bit_base(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    """method: qlora loads the base in bitsandbytes NF4 (double quantization) and trains LoRA on top."""
    cfg = SFTConfig(method="qlora", max_steps=3, batch_size=8, learning_rate=5e-3, logging_steps=1)
    res = train_sft(tiny_ref, _records(tiny_data, "train"), cfg, tmp_path / "qlora")
    assert res.metrics["method"] == "qlora" and res.metrics["steps"] == 3
    assert (tmp_path / "qlora" / "adapter_model.safetensors").exists()
    model = load_model(tiny_ref, quantize_4bit=True)
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
    assert model.config.quantization_config.bnb_4bit_use_double_quant


def test_sft_runs_under_accelerate_launch_single_process(tiny_data, tmp_path):
    """The accelerate path (`accelerate launch -m tuneline.cli train`), one CPU process: trains and saves the adapter."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tuneline.paths import PROJECT_ROOT

    records = tmp_path / "task.parquet"
    tiny_data.task.to_parquet(records)
    launch = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "TUNELINE_CHECKPOINTS": str(tmp_path / "ckpt"), "ACCELERATE_USE_CPU": "true"}
    p = subprocess.run([launch, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "--cpu", "-m", "tuneline.cli", "train", str(PROJECT_ROOT / "configs" / "tiny.yaml"),
                        "--out", str(tmp_path / "adapter"), "--records", str(records)],
                       cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    metrics = json.loads([x for x in p.stdout.splitlines() if x.startswith("METRICS ")][-1][8:])
    assert metrics["steps"] > 0 and metrics["final_loss"] < metrics["first_loss"], metrics
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_a_new_machine_resumes_from_the_checkpoint_mirror(tiny_ref, tiny_data, tmp_path, monkeypatch):
    """Checkpoints are copied to the mirror as they are written; a run with an empty local checkpoint dir
    (a new pod) copies the newest back and resumes from it instead of training again."""
    import tuneline.train.checkpoints as training
    from tuneline.train.checkpoints import DirMirror

    rows = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    cfg = SFTConfig(max_steps=4, batch_size=4, seed=3)
    mirror = DirMirror(tmp_path / "mirror")
    monkeypatch.setattr(training, "SAVE_STEPS", 2)
    monkeypatch.setattr(training, "CHECKPOINT_ROOT", tmp_path / "machine-a")
    first = train_sft(tiny_ref, rows, cfg, tmp_path / "a", mirror=mirror)
    assert first.metrics["resumed_from"] is None
    assert [p.name for p in (tmp_path / "mirror").glob("sft-*/checkpoint-*")] == ["checkpoint-4"]
    monkeypatch.setattr(training, "CHECKPOINT_ROOT", tmp_path / "machine-b")  # nothing local
    again = train_sft(tiny_ref, rows, cfg, tmp_path / "b", mirror=mirror)
    assert again.metrics["resumed_from"] and again.metrics["resumed_from"].endswith("checkpoint-4")
    assert str(tmp_path / "machine-b") in again.metrics["resumed_from"]
    a = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "a")
    b = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "b")
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(x, y), n


@pytest.mark.parametrize("loss_type", ["orpo", "simpo", "kto"])
def test_orpo_simpo_kto_train_from_the_sft_adapter(loss_type, tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    """The other preference losses, each through its TRL trainer: it trains the SFT adapter further and
    saves one adapter (KTO's frozen reference copy, like DPO's, is not saved)."""
    train_sft(tiny_ref, _records(tiny_data, "train"), SFT, tmp_path / "sft")
    cfg = DPOConfig(loss_type=loss_type, sft_weight=0.0, batch_size=4, max_length=96, learning_rate=1e-2, beta=0.5)
    res = train_dpo(tiny_ref, str(tmp_path / "sft"), "lora", _records(tiny_data, "mining"),
                    tiny_data.preferences.to_dict("records"), cfg, tmp_path / "out", max_new_tokens=4)
    assert res.metrics["steps"] > 0 and res.metrics["first_loss"] is not None
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == [], "one adapter, no ref copy"
    sft = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "sft")
    out = PeftModel.from_pretrained(load_model(tiny_ref), tmp_path / "out")
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert not torch.allclose(sft(ids).logits, out(ids).logits), f"{loss_type} changed nothing"


def test_sft_weight_is_refused_where_the_loss_has_no_such_term():
    from pydantic import ValidationError

    for loss in ("orpo", "kto"):
        with pytest.raises(ValidationError, match="set dpo.sft_weight: 0"):
            DPOConfig(loss_type=loss)
    assert DPOConfig(loss_type="simpo").sft_weight == 1.0  # SimPO: CPO's BC term


def test_sft_logs_a_held_out_eval_curve(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    from tuneline.dashboard import loss_curve_html

    cfg = SFT.model_copy(update={"eval_steps": 3, "eval_rows": 8})
    res = train_sft(tiny_ref, _records(tiny_data, "train"), cfg, tmp_path / "a", eval_records=_records(tiny_data, "eval"))
    evals = [h for h in res.history if "eval_loss" in h]
    assert len(evals) >= 2 and evals[-1]["step"] == res.metrics["steps"], evals
    assert res.metrics["final_eval_loss"] < res.metrics["first_eval_loss"]  # it learns the task's format
    html = loss_curve_html(res.history, "SFT loss")
    assert f"<td>{evals[-1]['eval_loss']}</td></tr>" in html
