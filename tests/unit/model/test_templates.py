"""data.chat_template: validation, resolution against a tokenizer, and the Ollama translation of every family.

    .venv/bin/pytest -q tests/unit/model/test_templates.py
"""

import pytest

from tuneline.config import ConfigError, load
from tuneline.model.templates import (
    FAMILIES,
    TURN_END,
    ChatTemplate,
    TemplateError,
    default_system,
    family_jinja,
    foreign,
    modelfile,
    ollama_prompt,
    ollama_template,
    render,
    render_go,
    resolve,
)
from tuneline.paths import PROJECT_ROOT

TWO_TURNS = [{"role": "user", "content": "my card is lost"}, {"role": "assistant", "content": "lost_card"},
             {"role": "user", "content": "and stolen?"}]


def _family(name: str, bos: bool = False) -> ChatTemplate:
    return ChatTemplate(family=name, jinja=family_jinja(name, bos), turn_end=TURN_END[name] or "</s>", eos="</s>",
                        bos=bos, reason="test")


@pytest.fixture()
def raw_tok(tiny_ref):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_ref.path)


@pytest.mark.parametrize("value, says", [("gemma3", "unknown chat template 'gemma3'"),
                                         ("templates/none.jinja", "no such file")])
def test_config_names_key_value_and_fix(value, says):
    with pytest.raises(ConfigError) as err:
        load(PROJECT_ROOT / "configs" / "tiny.yaml", [f"data.chat_template={value}"])
    text = str(err.value)
    assert f"data.chat_template={value}" in text and says in text and "auto" in text


def test_auto_keeps_the_tokenizers_own_template(tiny_ref, raw_tok):
    """The default run (SmolLM2, ChatML) renders byte-identical prompts and keeps its EOS."""
    from tuneline.model.base import load_tokenizer

    ref = tiny_ref.with_template("auto")
    assert (ref.template.family, ref.template.turn_end) == ("chatml", "<|im_end|>")
    tok = load_tokenizer(ref)
    chat = [{"role": "system", "content": ""}, *TWO_TURNS]
    for gen in (True, False):
        assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == \
            raw_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert (tok.eos_token, tok.pad_token) == (raw_tok.eos_token, raw_tok.pad_token)


def test_auto_without_a_template_is_plain_ending_at_eos(raw_tok):
    raw_tok.chat_template = None
    t = resolve("auto", raw_tok)
    assert t.family == "plain" and t.turn_end == t.eos == raw_tok.eos_token
    assert t.reason == f"auto: the tokenizer has no chat template -> plain (answers end with {raw_tok.eos_token})"
    t.apply(raw_tok)
    text = raw_tok.apply_chat_template(TWO_TURNS[:2], tokenize=False)
    assert text == f"### Instruction:\nmy card is lost\n\n### Response:\nlost_card{raw_tok.eos_token}"


def test_family_needs_its_tokens(raw_tok):
    with pytest.raises(TemplateError, match=r"'gemma': the tokenizer has no <start_of_turn>, <end_of_turn> token.*"
                                            r"Use auto or plain"):
        resolve("gemma", raw_tok)
    t = resolve("chatml", raw_tok)  # SmolLM2 has the ChatML tokens
    assert t.family == "chatml" and t.reason == "data.chat_template: chatml"


def test_jinja_file_is_read_and_recognised(raw_tok, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(family_jinja("phi3", False))
    t = resolve(str(path), raw_tok)
    assert (t.family, t.jinja, t.reason) == ("phi3", path.read_text(), f"data.chat_template: {path} (phi3)")
    # Its markers say Phi-3, but this tokenizer has no <|end|> token: turns end at its own EOS.
    assert t.turn_end == t.eos == raw_tok.eos_token


# --- Ollama ---------------------------------------------------------------------------------------

EXPECTED = {  # two turns, no system message, without BOS: what each family's TEMPLATE must render
    "chatml": "<|im_start|>user\nmy card is lost<|im_end|>\n<|im_start|>assistant\nlost_card<|im_end|>\n"
              "<|im_start|>user\nand stolen?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\nmy card is lost<|eot_id|><|start_header_id|>assistant"
              "<|end_header_id|>\n\nlost_card<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nand stolen?"
              "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>user\nmy card is lost<end_of_turn>\n<start_of_turn>model\nlost_card<end_of_turn>\n"
             "<start_of_turn>user\nand stolen?<end_of_turn>\n<start_of_turn>model\n",
    "mistral": "[INST] my card is lost [/INST]lost_card</s>[INST] and stolen? [/INST]",
    "phi3": "<|user|>\nmy card is lost<|end|>\n<|assistant|>\nlost_card<|end|>\n<|user|>\nand stolen?<|end|>\n"
            "<|assistant|>\n",
    "plain": "### Instruction:\nmy card is lost\n\n### Response:\nlost_card</s>### Instruction:\nand stolen?\n\n"
             "### Response:\n",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_ollama_template_renders_the_jinja_text(family):
    t = _family(family)
    assert render(t, TWO_TURNS) == EXPECTED[family]
    assert ollama_prompt(ollama_template(t), None, TWO_TURNS) == EXPECTED[family]
    for system in ("", "Answer with the intent."):  # as a message: the Go template places it as the Jinja does
        chat = [{"role": "system", "content": system}, *TWO_TURNS]
        assert ollama_prompt(ollama_template(t), None, chat) == render(t, chat)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("system", ["", "Answer with the intent.", None])
def test_modelfile_serves_the_training_prompt(family, system):
    """SYSTEM is the training system prompt (none when it was empty); `ollama run` without a system message
    gets exactly the prompt training rendered, BOS included (Ollama adds it when the GGUF says so)."""
    t = _family(family, bos=True)
    chat = ([{"role": "system", "content": system}] if system is not None else []) + TWO_TURNS
    text = modelfile(t, "model-Q8_0.gguf", system, chat, bos_token="<s>")
    assert text.startswith('FROM ./model-Q8_0.gguf\nTEMPLATE """')
    assert (f'SYSTEM """{system}"""' in text) == bool(system) and ("SYSTEM" in text) == bool(system)
    assert f'PARAMETER stop "{t.turn_end}"' in text and text.endswith("PARAMETER temperature 0\n")
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<s>" + ollama_prompt(go, system, TWO_TURNS) == render(t, chat, bos_token="<s>")


def test_modelfile_keeps_a_templates_default_system():
    """A template that inserts its own system text (SmolLM2's) trained on it when data.system_prompt was null."""
    own = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] "
           "+ '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")
    t = foreign(own, "<|im_end|>", False, "test")
    assert default_system(t) == "You are SmolLM" and default_system(_family("chatml")) is None
    assert 'SYSTEM """You are SmolLM"""' in modelfile(t, "m.gguf", None, TWO_TURNS[:1])
    # Trained with an empty system turn: served with one, not with the default.
    empty = [{"role": "system", "content": ""}, TWO_TURNS[0]]
    text = modelfile(t, "m.gguf", "", empty)
    assert "SYSTEM" not in text and '{{- if ne (index .Messages 0).Role "system" }}<|im_start|>system\n<|im_end|>' in text


def test_modelfile_refuses_what_it_cannot_serve():
    custom = foreign("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", "</s>", False, "t")
    with pytest.raises(TemplateError, match="no Ollama translation for a custom chat template"):
        modelfile(custom, "m.gguf", None, TWO_TURNS[:1])
    # Marked ChatML, laid out otherwise: the check catches that the translation would serve another prompt.
    odd = foreign("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ': ' + m['content'] + '<|im_end|>' }}"
                  "{% endfor %}", "<|im_end|>", False, "t")
    with pytest.raises(TemplateError, match="would serve"):
        modelfile(odd, "m.gguf", None, TWO_TURNS[:1])


def test_render_go_subset():
    data = {"Messages": [{"Role": "system", "Content": "s"}, {"Role": "user", "Content": "u"}], "System": "s"}
    go = ('A  {{- range .Messages }} {{ if eq .Role "system" }}S={{ .Content }}{{ else if eq .Role "user" }}'
          'U={{ .Content }}{{ else }}?{{ end }}{{ end -}}   B{{ $x := "v" }}{{ $x }}{{ if and $.System (ne '
          '(index .Messages 0).Role "user") }}!{{ end }}{{ len .Messages }}')
    assert render_go(go, data) == "A S=s U=uBv!2"
    with pytest.raises(TemplateError, match="unbalanced"):
        render_go("{{ end }}", data)
