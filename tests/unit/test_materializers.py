"""The directory materializer round-trips adapters and merged models exactly (same logits after save/load)
and export dirs with their typed files; a merged model's content hash leaves its card out."""

from pathlib import Path

import torch
from peft import PeftModel

from materializers.directories import DirectoryMaterializer
from tuneline.artifacts import TrainedDir
from tuneline.config import SFTConfig
from tuneline.model.base import load_model
from tuneline.train.sft import train


def test_adapter_round_trip_gives_equal_logits(tiny_ref, tiny_data, tmp_path, isolated_checkpoints):
    rows = tiny_data.task[tiny_data.task.split == "train"].to_dict("records")
    train(tiny_ref, rows, SFTConfig(max_steps=2, batch_size=8), tmp_path / "adapter")
    handle = TrainedDir(path=str(tmp_path / "adapter"), base=tiny_ref, kind="sft", method="lora", metrics={"x": 1})
    store = tmp_path / "store"
    store.mkdir()
    DirectoryMaterializer(uri=str(store)).save(handle)
    loaded = DirectoryMaterializer(uri=str(store)).load(TrainedDir)
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


def test_export_dir_round_trips_typed_files(tmp_path):
    from tuneline.artifacts import ExportDir
    from tuneline.eval.harness import BenchmarkResult
    from tuneline.eval.perplexity import PerplexityResult
    from tuneline.eval.task import TaskResult
    from tuneline.export.records import ExportFile, ExportSample

    out = tmp_path / "gguf"
    out.mkdir()
    (out / "model-Q8_0.gguf").write_bytes(b"GGUF")
    mmlu = BenchmarkResult(name="mmlu_cloze", metric="acc", score=0.5, n=2, per_item=[1.0, 0.0], item_ids=["a", "b"],
                           seconds=1.0)
    f = ExportFile(format="gguf", qtype="Q8_0", path="model-Q8_0.gguf", score=0.5, per_item=[1.0, 0.0], passed=True,
                   samples=[ExportSample(prompt="p", expected="x", predicted="x", finish_reason="stop")],
                   benchmarks={"mmlu": mmlu}, nll_per_item=[2.0, 2.5], perplexity=9.5, perplexity_increase=0.01)
    handle = ExportDir(path=str(out), format="gguf", files=[f],
                       reference=TaskResult(score=0.5, n=2, per_item=[1.0, 0.0], item_ids=["0", "1"], predictions=["x", "y"],
                                          seconds=0),
                       reference_benchmarks={"mmlu": mmlu}, reference_perplexity=PerplexityResult(ppl=9.4, per_item=[2.0, 2.4]))
    store = tmp_path / "store"
    store.mkdir()
    DirectoryMaterializer(uri=str(store)).save(handle)
    loaded = DirectoryMaterializer(uri=str(store)).load(ExportDir)
    assert loaded.files == handle.files and isinstance(loaded.files[0], ExportFile)
    assert loaded.files[0].candidate == "gguf-Q8_0" and loaded.files[0].predictions == ["x"]
    assert loaded.model_dump(exclude={"path"}) == handle.model_dump(exclude={"path"})
    assert (Path(loaded.path) / loaded.files[0].path).read_bytes() == b"GGUF"


def test_merged_model_content_hash_leaves_out_the_card(tmp_path, tiny_ref):
    from tuneline.artifacts import ModelDir

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "m" / "README.md").write_text("evaluation table, 2000 resamples")
    m = DirectoryMaterializer(uri=str(tmp_path))
    handle = ModelDir(path=str(tmp_path / "m"), base=tiny_ref, adapters=["sft"])
    before = m.compute_content_hash(handle)
    (tmp_path / "m" / "README.md").write_text("evaluation table, 1000 resamples")
    assert m.compute_content_hash(handle) == before
    (tmp_path / "m" / "model.safetensors").write_bytes(b"other weights")
    assert m.compute_content_hash(handle) != before
