"""GGUF export on the tiny random model: llama.cpp's converter and quantizer, files loaded back."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import llama_cpp  # noqa: E402  (no skip: the GGUF export is a core step; `make setup` installs it)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tuneline.config import BaseModelConfig  # noqa: E402
from tuneline.export import gguf as export_gguf  # noqa: E402
from tuneline.export.gate import Gate, Probe  # noqa: E402
from tuneline.export.gguf_types import GGUF_FTYPES  # noqa: E402
from tuneline.model.base import prepare, sha256_file  # noqa: E402

export_gguf.converter_dir()  # fails loudly with what to run when the converter is missing

CONVERSATIONS = [
    [{"role": "user", "content": "Classify the banking intent: my card is lost"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Classify the banking intent: top up failed"}],
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(prepare(BaseModelConfig(source="tiny")).path)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def ggufs(model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    files = {t: export_gguf.convert(model_dir, out / f"tiny-{t}.gguf", t) for t in ("F32", "F16")}
    files["Q8_0"] = export_gguf.quantize(files["F16"], out / "tiny-Q8_0.gguf", "Q8_0")
    return files


def test_ftype_table_matches_llama_cpp():
    for name, number in GGUF_FTYPES.items():
        const = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
        assert getattr(llama_cpp, const) == number, name


def test_metadata_carries_template_and_tokens(ggufs, tokenizer):
    for qtype, path in ggufs.items():
        meta = export_gguf.read_metadata(path)
        assert meta["architecture"] == "llama"
        assert meta["file_type"] == GGUF_FTYPES[qtype]
        assert meta["chat_template"] == tokenizer.chat_template
        assert meta["eos_token_id"] == tokenizer.eos_token_id
        assert meta["eos_token"] == tokenizer.eos_token
        assert meta["bos_token_id"] == tokenizer.bos_token_id
    assert ggufs["Q8_0"].stat().st_size < ggufs["F16"].stat().st_size < ggufs["F32"].stat().st_size


def test_llama_cpp_greedy_matches_transformers(ggufs, model_dir, tokenizer):
    """Same prompt tokens, same next-token logits, same greedy tokens, on the f32 file.

    f32 makes the GGUF weights bit-identical to the safetensors, so the two engines differ only
    by float summation order (~1e-4 on these logits). A random model can still have near-ties, so
    each llama.cpp token is accepted when its transformers logit is within 1e-3 of the best one
    (exactly "the same greedy token" unless two tokens tie) rather than by comparing ids blindly.
    """
    import torch
    from transformers import AutoModelForCausalLM

    messages = CONVERSATIONS[0]
    ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    llm = llama_cpp.Llama(model_path=str(ggufs["F32"]), n_ctx=256, verbose=False, n_threads=os.cpu_count(), logits_all=True)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        generated = []
        for token in llm.generate(ids, temp=0.0, top_k=1):
            generated.append(token)
            if len(generated) == 3:
                break
        llm.reset()
        llm.eval(ids)
        cpp_logits = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        hf_logits = hf(torch.tensor([ids + generated])).logits[0].numpy()
    assert np.abs(cpp_logits - hf_logits[: len(ids)]).max() < 1e-3
    for step, token in enumerate(generated):
        row = hf_logits[len(ids) - 1 + step]
        assert row[token] >= row.max() - 1e-3, (step, token, int(row.argmax()))


def test_check_scores_and_reports_finish(ggufs):
    result = export_gguf.check(ggufs["Q8_0"], CONVERSATIONS, ["lost_card", "top_up_failed"], max_tokens=4)
    assert len(result.samples) == 2 and result.samples[1].prompt.endswith("top up failed")
    assert result.score == 0.0  # a random model does not know banking intents
    assert all(s.finish_reason in ("stop", "length") for s in result.samples)
    assert result.eos_share == sum(s.finish_reason == "stop" for s in result.samples) / 2


def test_modelfile_has_template_and_stop(ggufs):
    meta = export_gguf.read_metadata(ggufs["Q8_0"])
    path = export_gguf.write_modelfile(ggufs["Q8_0"], meta, CONVERSATIONS[0])
    text = path.read_text()
    assert path.parent == ggufs["Q8_0"].parent
    assert f"FROM ./{ggufs['Q8_0'].name}" in text
    assert f'PARAMETER stop "{meta["eos_token"]}"' in text and meta["eos_token"] == "<|im_end|>"
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text


def test_convert_failure_names_command(tmp_path):
    with pytest.raises(export_gguf.ExportError, match="convert_hf_to_gguf.py"):
        export_gguf.convert(tmp_path, tmp_path / "x.gguf", "f16")


def test_llama_cpp_is_built_without_amx():
    """On a CPU with AMX, llama.cpp's AMX backend segfaults in the first decode of every quantized file of
    SmolLM2-135M (Q4_0 to Q8_0, measured 2026-12-04); `make setup` builds llama.cpp without it."""
    assert b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info(), "run: bash scripts/install_llama_cpp.sh .venv"


def test_an_amx_build_is_refused_before_any_file_is_made(model_dir, tmp_path, monkeypatch):
    """A venv built before that fix gets an error naming the rebuild, not a segfault that takes the run down."""
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX512 = 1 | AMX_INT8 = 1 | ")
    with pytest.raises(export_gguf.ExportError, match=r"AMX backend.*bash scripts/install_llama_cpp.sh"):
        export_gguf.export_files(model_dir, tmp_path, ["f16"], _probe(["a", "b"]),
                                  Gate(reference_accuracy=1.0, max_accuracy_drop=0.05))
    assert not list(tmp_path.iterdir())


def _probe(answers, **kw) -> Probe:
    return Probe(conversations=CONVERSATIONS, answers=answers, max_tokens=4, **kw)


def test_export_flags_accuracy_drop_and_keeps_going(model_dir, tmp_path, monkeypatch):
    # An ftype llama.cpp rejects: its entry must fail with the error while the others are checked.
    monkeypatch.setitem(export_gguf.GGUF_FTYPES, "BOGUS", 999)
    gate = Gate(reference_accuracy=1.0, max_accuracy_drop=0.05)
    files = export_gguf.export_files(model_dir, tmp_path, ["f16", "BOGUS", "Q8_0"], _probe(["lost_card", "top_up_failed"]), gate)
    assert [f.qtype for f in files] == ["F16", "BOGUS", "Q8_0"]
    assert not any(f.passed for f in files)
    assert "invalid output file type 999" in files[1].reason
    for f in (files[0], files[2]):
        assert f.sha256 == sha256_file(Path(f.path)) and f.size_bytes == Path(f.path).stat().st_size
        assert "score 0.000 < 0.950" in f.reason and len(f.samples) == 2 and f.seconds > 0
        assert not f.modelfile and f.perplexity is None  # no texts given: no perplexity check


def test_export_passes_within_tolerance(ggufs, model_dir, tmp_path, monkeypatch):
    # Conversion is tested above; reuse its file so this test only exercises the verdict.
    monkeypatch.setattr(export_gguf, "convert", lambda src, dst, outtype: Path(shutil.copy(ggufs["F16"], dst)))
    gate = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, min_eos_share=0.0)
    files = export_gguf.export_files(model_dir, tmp_path, ["F16", "Q8_0"], _probe(["a", "b"]), gate)
    assert all(f.passed for f in files), [f.reason for f in files]
    assert all(Path(f.modelfile).is_file() for f in files)
    assert files[0].versions["llama_cpp_python"] == llama_cpp.__version__ and files[0].versions["gguf"]


def test_gguf_perplexity_equals_transformers(ggufs, model_dir, tokenizer):
    """On the f32 file llama.cpp's per-text NLL equals transformers' on the same token ids, so an export's
    perplexity is comparable to the merged model's item by item; quantizing moves it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneline.eval.perplexity import encode_texts, gguf_perplexity, perplexity

    texts = ["My card was lost yesterday and I need a new one.", "How long does a transfer to another bank take?"]
    hf = perplexity(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer, texts)
    ids = encode_texts(tokenizer, texts)
    f32, q8 = gguf_perplexity(ggufs["F32"], ids), gguf_perplexity(ggufs["Q8_0"], ids)
    assert f32.n_tokens == hf.n_tokens == sum(len(i) - 1 for i in ids)
    assert np.allclose(f32.per_item, hf.per_item, atol=1e-3), (f32.per_item, hf.per_item)
    assert q8.per_item != f32.per_item and abs(q8.ppl / hf.ppl - 1) < 0.05


def test_auto_rejects_over_the_perplexity_limit_and_picks_the_next(ggufs, model_dir, tokenizer, tmp_path, monkeypatch):
    """A type over its perplexity limit is kept but rejected with the numbers; auto goes on to the next
    type and marks the first that passes; nothing raises."""
    from tuneline.eval.perplexity import encode_texts, gguf_perplexity

    monkeypatch.setattr(export_gguf, "convert", lambda src, dst, outtype: Path(shutil.copy(ggufs["F16"], dst)))
    ids = encode_texts(tokenizer, ["My card was lost yesterday and I need a new one.", "Where is my top up?"])
    ref = gguf_perplexity(ggufs["F16"], ids).ppl * 0.9  # every file is ~11 % above this reference
    gate = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, min_eos_share=0.0, reference_ppl=ref,
                            max_ppl_increase={"Q4_0": 0.05, "*": 0.5})
    files = export_gguf.export_files(model_dir, tmp_path, ["F16", "auto"], _probe(["a", "b"], ppl_ids=ids), gate,
                               auto_types=["Q4_0", "Q6_K", "Q5_K_M"])
    assert [(f.qtype, f.auto, f.passed) for f in files] == [("F16", "", True), ("Q4_0", "tried", False), ("Q6_K", "picked", True)]
    q4 = files[1]
    assert Path(q4.path).is_file() and not q4.modelfile  # kept, never shipped
    assert q4.perplexity_increase > 0.05 and "limit +5.00%" in q4.reason and "perplexity" in q4.reason
    assert len(q4.nll_per_item) == 2 and files[2].perplexity_increase < 0.5
    # Perplexity is scored first: a file it rejects is not asked the rows (no answers, no task score), and the
    # reports say so instead of printing a score of zero; files it passes are asked as before.
    assert not q4.asked and q4.samples == [] and q4.per_item == [] and "task rows not asked" in q4.reason
    assert q4.score_text("exact_match").startswith("not asked") and "score 0.000" not in q4.reason
    assert files[2].asked and len(files[2].samples) == 2
    # The asking is timed apart from making and perplexity (the report's rows/s); a file not asked took none.
    assert 0 < files[2].ask_seconds < files[2].seconds and q4.ask_seconds == 0
    # The converted F16 file passed its (lossless) perplexity check; a smaller file made from it passed the rows
    # and ships, so F16's rows were not asked, and its reason and score say why.
    f16 = files[0]
    assert not f16.asked and f16.samples == [] and f16.per_item == [] and Path(f16.modelfile).is_file()
    assert "task rows not asked: Q6_K, smaller and made from it, passed them and ships" in f16.reason
    assert f16.score_text("exact_match") == "not asked (a smaller file ships)"


def test_a_file_surely_over_its_limit_is_not_scored_on_the_rest_of_the_texts(ggufs, model_dir, tokenizer, tmp_path,
                                                                               monkeypatch):
    """With the merged model's per-text NLLs (gate_for gives them), the texts go LOOK at a time through llama.cpp;
    a file whose rise is surely over its limit stops there and says so, a file within it is scored on every text."""
    from tuneline.eval.perplexity import encode_texts, gguf_perplexity
    from tuneline.export.gate import LOOK

    monkeypatch.setattr(export_gguf, "convert", lambda src, dst, outtype: Path(shutil.copy(ggufs["F16"], dst)))
    sentences = ["My card was lost yesterday and I need a new one.", "Where is my top up?",
                 "Why was I charged twice for the same coffee?", "How long does a transfer to Germany take?"]
    ids = encode_texts(tokenizer, [f"{s} ({i})" for i in range(12) for s in sentences])  # 48 texts
    own = gguf_perplexity(ggufs["F16"], ids)
    # The "merged model" is 0.3 nats a token better than the F16 file on every text: every file is ~+35 % over it.
    gate = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, min_eos_share=0.0, reference_ppl=own.ppl / 1.35,
                reference_nll=[x - 0.3 for x in own.per_item], max_ppl_increase={"F16": 0.5, "*": 0.05})
    files = export_gguf.export_files(model_dir, tmp_path, ["F16", "Q4_0"], _probe(["a", "b"], ppl_ids=ids), gate)
    f16, q4 = files
    assert f16.perplexity_bound is None and len(f16.nll_per_item) == len(ids)  # within its (loose) limit: all texts
    assert f16.nll_per_item == pytest.approx(own.per_item) and f16.perplexity == pytest.approx(own.ppl)
    assert len(q4.nll_per_item) == LOOK and q4.perplexity_bound > 0.05 and not q4.passed and not q4.asked
    assert f"perplexity on the first {LOOK} of {len(ids)} texts" in q4.reason
    assert f"the other {len(ids) - LOOK} texts were not scored" in q4.reason


def test_the_converted_file_is_asked_when_no_smaller_file_passes(ggufs, model_dir, tokenizer, tmp_path, monkeypatch):
    from tuneline.eval.perplexity import encode_texts, gguf_perplexity

    monkeypatch.setattr(export_gguf, "convert", lambda src, dst, outtype: Path(shutil.copy(ggufs["F16"], dst)))
    ids = encode_texts(tokenizer, ["My card was lost yesterday and I need a new one.", "Where is my top up?"])
    gate = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, min_eos_share=0.0,
                reference_ppl=gguf_perplexity(ggufs["F16"], ids).ppl, max_ppl_increase={"F16": 0.001, "*": 0.0})
    files = export_gguf.export_files(model_dir, tmp_path, ["F16", "Q4_0"], _probe(["a", "b"], ppl_ids=ids), gate)
    assert [(f.qtype, f.passed, f.asked) for f in files] == [("F16", True, True), ("Q4_0", False, False)], files
    assert len(files[0].samples) == 2 and "task rows not asked" not in files[0].reason


def test_auto_type_names_are_checked():
    with pytest.raises(ValueError, match="unknown GGUF types"):
        export_gguf._validate_types(["f16", "auto"], ["Q9_Z"])
    with pytest.raises(ValueError, match="auto_types is empty"):
        export_gguf._validate_types(["f16", "auto"], [])


def test_lm_eval_on_the_gguf_matches_transformers(ggufs, model_dir, tokenizer):
    """GGUFLM's loglikelihoods (context cached, continuations on top) equal HFLM's on the f32 file,
    and MMLU (cloze) and GSM8K run on a GGUF through the same custom tasks as the HF candidates."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from tuneline.config import EvaluateConfig, GSM8KConfig, MMLUConfig
    from tuneline.eval.gguf_lm import GGUFLM
    from tuneline.eval.harness import run_gguf_benchmarks

    pairs = [("Question: where is my card?\nAnswer:", " lost"), ("Question: where is my card?\nAnswer:", " in the mail"),
             ("The capital of France is ", "Paris"), ("Numbers: 1 2 3", " 4 5")]
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    hf = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer=tokenizer,
              batch_size=1, device="cpu")
    want = hf.loglikelihood(reqs)
    lm = GGUFLM(ggufs["F32"], n_ctx=256)
    evals, inner = [], lm.llm.eval
    lm.llm.eval = lambda tokens: evals.append(lm.llm._logits_all) or inner(tokens)
    try:
        got = lm.loglikelihood(reqs)
    finally:
        lm.close()
    # Each distinct context once without vocabulary logits, each continuation (with its context's last token) with.
    assert evals.count(False) == 3 and evals.count(True) == len(reqs)
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert abs(g - w) < 1e-2, (g, w)
    cfg = EvaluateConfig(mmlu=MMLUConfig(subjects=["marketing"], limit_per_subject=3),
                         gsm8k=GSM8KConfig(limit=2, num_fewshot=1, max_new_tokens=8))
    res = run_gguf_benchmarks(ggufs["Q8_0"], cfg)
    assert res["mmlu"].n == 3 and len(res["mmlu"].per_item) == 3 and 0 <= res["mmlu"].score <= 1
    assert res["gsm8k"].n == 2 and res["gsm8k"].item_ids[0].startswith("gsm8k:")
