"""The directory materializer round-trips an adapter exactly (same logits after save/load)."""

import torch
from peft import PeftModel

from materializers.directories import DirectoryMaterializer
from tuneline.artifacts import AdapterDir
from tuneline.model.base import load_model
from tuneline.config import SFTConfig
from tuneline.train.sft import train


def test_adapter_round_trip_gives_equal_logits(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    rows = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    train(tiny_ref, rows, SFTConfig(max_steps=2, batch_size=8), tmp_path / "adapter")
    handle = AdapterDir(path=str(tmp_path / "adapter"), base=tiny_ref, kind="sft", method="lora", metrics={"x": 1})
    store = tmp_path / "store"
    store.mkdir()
    DirectoryMaterializer(uri=str(store)).save(handle)
    loaded = DirectoryMaterializer(uri=str(store)).load(AdapterDir)
    assert loaded.path != handle.path and loaded.base == tiny_ref and loaded.metrics == {"x": 1}
    assert sorted(p.name for p in loaded.files()) == sorted(p.name for p in handle.files())
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        a = PeftModel.from_pretrained(load_model(tiny_ref), handle.path)(ids).logits
        b = PeftModel.from_pretrained(load_model(tiny_ref), loaded.path)(ids).logits
    assert torch.equal(a, b)


def test_merged_model_round_trip_gives_equal_logits(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    from transformers import AutoModelForCausalLM

    from tuneline.artifacts import ModelDir
    from tuneline.export.merge import merge

    rows = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    train(tiny_ref, rows, SFTConfig(max_steps=2, batch_size=8), tmp_path / "adapter")
    merge(tiny_ref, str(tmp_path / "adapter"), tmp_path / "merged", dtype="float32")
    handle = ModelDir(path=str(tmp_path / "merged"), base=tiny_ref, adapters=["sft"])
    store = tmp_path / "store"
    store.mkdir()
    DirectoryMaterializer(uri=str(store)).save(handle)
    loaded = DirectoryMaterializer(uri=str(store)).load(ModelDir)
    assert {"README.md", "chat_template.jinja", "generation_config.json"} <= {p.name for p in (store / "files").iterdir()}
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(handle.path)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(loaded.path)(ids).logits
        merged_vs_adapter = PeftModel.from_pretrained(load_model(tiny_ref), str(tmp_path / "adapter"))(ids).logits
    assert torch.equal(a, b)
    torch.testing.assert_close(a, merged_vs_adapter, rtol=1e-5, atol=1e-5)
