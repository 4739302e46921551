"""Every chat template family end to end on a tiny random Llama whose tokenizer carries that family's tokens.

    .venv/bin/pytest -q tests/integration/test_template_matrix.py

Per family: TRL's completion-only mask covers exactly the answer and its turn-end token; the tokenizer and
the merged model stop at the turn end; the GGUF converted from the merged dir carries the template, and
llama-cpp-python's own chat formatting of it gives the Hugging Face token ids for a two-turn conversation;
the Modelfile is written (its TEMPLATE is checked against the GGUF's template as it is written). A passing
GGUF with a template Ollama has no translation for stays passed, with a note instead of a Modelfile.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path
from typing import NamedTuple

import pytest

from tuneline.config import BaseModelConfig, SFTConfig
from tuneline.export import gguf as export_gguf
from tuneline.export.gate import Gate, Probe
from tuneline.export.merge import merge
from tuneline.model.base import BaseModelRef, load_tokenizer, prepare
from tuneline.model.templates import FAMILIES, SPECIAL_TOKENS

SYSTEM = {"role": "system", "content": ""}
QUESTION = {"role": "user", "content": "Classify the banking intent: my card is lost"}
ANSWER = "lost_or_stolen_card"
TWO_TURNS = [SYSTEM, QUESTION, {"role": "assistant", "content": ANSWER},
             {"role": "user", "content": "And if it was stolen?"}]


def _tiny_base(tiny_dir: str, out: Path, tokens: tuple[str, ...], template: str | None = None) -> Path:
    """A 1-layer random Llama with the embedded tokenizer plus `tokens` (special), no chat template unless given."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = template
    if tokens:
        tok.add_tokens(list(tokens), special_tokens=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    if template:
        (out / "chat_template.jinja").write_text(template)
    return out


class FamilyRun(NamedTuple):
    family: str
    ref: BaseModelRef
    tok: object  # the tokenizer every step loads (load_tokenizer)
    merged: Path
    gguf: Path
    meta: dict  # the GGUF's metadata (read_metadata)
    llm: object  # llama_cpp.Llama on the GGUF's vocabulary (no weights: its chat formatting and tokens)


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tiny_ref, tmp_path_factory):
    """The family's ref (`plain` through `auto`: the tokenizer has no template), merged dir and F32 GGUF."""
    import llama_cpp

    family = request.param
    root = tmp_path_factory.mktemp(family)
    base = _tiny_base(tiny_ref.path, root / "base", SPECIAL_TOKENS[family])
    ref = prepare(BaseModelConfig(source=str(base))).with_template("auto" if family == "plain" else family)
    merged = merge(ref, str(base), root / "merged", dtype="float32")  # a full model dir merges as is
    gguf = export_gguf.convert(merged, root / "model-F32.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, verbose=False, vocab_only=True)
    yield FamilyRun(family, ref, load_tokenizer(ref), merged, gguf, export_gguf.read_metadata(gguf), llm)
    llm.close()


def test_auto_picks_plain_for_a_tokenizer_without_template(family_run):
    family, ref = family_run.family, family_run.ref
    assert ref.template.family == family
    if family == "plain":
        assert ref.template.reason.startswith("auto: the tokenizer has no chat template -> plain")


def test_loss_mask_covers_exactly_answer_and_turn_end(family_run, tmp_path):
    """TRL's completion-only mask as tuneline's SFT builds it (its dataset and TRL config)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from tuneline.train.methods import method_for
    from tuneline.train.sft import to_dataset, trl_args

    family, ref, tok = family_run.family, family_run.ref, family_run.tok
    record = {"prompt": json.dumps([SYSTEM, QUESTION]), "assistant": ANSWER}
    cfg = SFTConfig()
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(ref.path), processing_class=tok,
                         args=trl_args(cfg, method_for(cfg), tmp_path, 96), train_dataset=to_dataset([record]))
    row = trainer.train_dataset[0]
    ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]  # TRL folds the mask into labels
    prompt_part, answer_part = [i for i, m in zip(ids, mask) if not m], [i for i, m in zip(ids, mask) if m]
    turn_end = tok.convert_tokens_to_ids(ref.template.turn_end)
    expected = tok(ANSWER, add_special_tokens=False).input_ids + [turn_end]
    # The whole row is the template's text and nothing more (no second BOS from the tokenizer).
    full = tok.apply_chat_template([SYSTEM, QUESTION, {"role": "assistant", "content": ANSWER}], tokenize=False)
    assert ids == tok(full, add_special_tokens=False).input_ids
    # The test tokenizer's GPT-2 pre-tokenizer reads "\n\n" at the end of a text as one token and before a
    # word as two, so Llama 3's header break moves into the completion here (Llama 3's own tokenizer keeps it
    # one token); TRL masks from where the two tokenizations part.
    head = []
    if family == "llama3":
        before = tok("\n\n" + ANSWER, add_special_tokens=False).input_ids
        head = before[: len(before) - len(expected) + 1]
    assert answer_part[: len(head) + len(expected)] == head + expected
    # After the turn end only the template's line break may follow (ChatML, Gemma, Phi-3 end turns with "\n").
    assert tok.decode(answer_part[len(head) + len(expected):]).strip() == ""
    prompt = tok.apply_chat_template([SYSTEM, QUESTION], tokenize=False, add_generation_prompt=True)
    assert tok.decode(prompt_part) + tok.decode(head) == prompt


def test_generation_stops_at_the_turn_end(family_run):
    import llama_cpp

    t, tok, llm = family_run.ref.template, family_run.tok, family_run.llm
    assert tok.eos_token == t.turn_end  # what every generate() in tuneline passes as eos_token_id
    stops = json.loads((family_run.merged / "generation_config.json").read_text())["eos_token_id"]
    stops = stops if isinstance(stops, list) else [stops]
    assert stops == tok.convert_tokens_to_ids(t.stops) and tok.convert_tokens_to_ids(t.turn_end) in stops
    turn_end = llm.tokenize(t.turn_end.encode(), add_bos=False, special=True)
    assert len(turn_end) == 1 and llama_cpp.llama_vocab_is_eog(llm._model.vocab, turn_end[0])


class _Sent(Exception):
    """Raised in place of generating: the prompt ids llama-cpp-python's chat path would generate from."""


def test_gguf_carries_the_template_and_llama_cpp_formats_like_transformers(family_run, monkeypatch):
    """llama-cpp-python's own chat path (the GGUF's embedded template) sends the ids transformers makes."""
    ref, tok, llm, meta = family_run.ref, family_run.tok, family_run.llm, family_run.meta
    assert meta["chat_template"] == ref.template.jinja
    assert meta["eos_token"] == ref.template.turn_end
    hf_ids = list(tok.apply_chat_template(TWO_TURNS, add_generation_prompt=True, tokenize=True, return_dict=False))

    def send(prompt, **kw):
        raise _Sent(list(prompt))

    monkeypatch.setattr(llm, "create_completion", send)
    with pytest.raises(_Sent) as sent:
        llm.create_chat_completion(messages=TWO_TURNS, max_tokens=1, temperature=0)
    assert sent.value.args[0] == hf_ids


def test_modelfile_is_written_for_every_family(family_run):
    path = export_gguf.write_modelfile(family_run.gguf, family_run.meta, [SYSTEM, QUESTION])
    text = path.read_text()
    assert f"FROM ./{family_run.gguf.name}" in text and "SYSTEM" not in text  # training used an empty system prompt
    assert f'PARAMETER stop "{family_run.ref.template.turn_end}"' in text


def test_passing_gguf_stays_passed_without_a_modelfile(tiny_ref, tmp_path):
    """A template no family matches has no Ollama translation: the file passes, with the reason noted."""
    custom = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + eos_token }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    template_file = tmp_path / "custom.jinja"
    template_file.write_text(custom)
    base = _tiny_base(tiny_ref.path, tmp_path / "base", ())
    ref = prepare(BaseModelConfig(source=str(base))).with_template(str(template_file))
    assert ref.template.family == "custom"
    merged = merge(ref, str(base), tmp_path / "merged", dtype="float32")
    gate = Gate(reference_accuracy=0.0, max_accuracy_drop=0.0, min_eos_share=0.0)
    probe = Probe(conversations=[[SYSTEM, QUESTION]], answers=[ANSWER], max_tokens=2)
    [f] = export_gguf.export_files(merged, tmp_path / "gguf", ["F32"], probe, gate)
    assert f.passed, f.reason
    assert not f.modelfile and f.modelfile_note.startswith("no Modelfile: no Ollama translation for a custom")
    assert not list((tmp_path / "gguf").glob("*.Modelfile"))
