"""Chat templates: the one home of the template families, resolved once per run from `data.chat_template`.

    data:
      chat_template: auto        # or chatml | llama3 | gemma | mistral | phi3 | plain | path/to/template.jinja

    template = resolve("auto", tokenizer)     # ChatTemplate(family="plain", reason="auto: the tokenizer has none -> plain")
    template.apply(tokenizer)                 # every step's tokenizer speaks it (tuneline.model.base.load_tokenizer)
    ollama_template(template)                 # the Modelfile's Go TEMPLATE, or None when the family has none

`auto` keeps the tokenizer's own template. A tokenizer without one (a base model) gets `plain`: an
instruction layout in ordinary text that needs no new tokens and ends each answer with the model's own
EOS. A family by name must find its special tokens in the tokenizer (adding tokens would need new,
untrained embeddings); a missing one fails with the key, the value and the fix. Each family starts with
the BOS token exactly when the tokenizer itself adds one to plain text, so training, evaluation and
llama.cpp (which tokenizes the rendered prompt without adding BOS) see the same ids.

The resolved ChatTemplate rides on the BaseModelRef, so training, evaluation, DPO, merge and export all
load the same tokenizer: its chat_template and, when the turn ends on a token other than EOS, an EOS
that is the turn end (generation stops there; the merged model and its GGUF inherit both).
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from tuneline.config import ConfigError
from tuneline.config import resolve as resolve_path

FAMILIES = ("chatml", "llama3", "gemma", "mistral", "phi3", "plain")
SETTINGS = ("auto", *FAMILIES)

# Every family is written in the form both transformers and llama-cpp-python render alike (both use
# trim_blocks and lstrip_blocks): text only inside {{ }} so no newline is trimmed away. `BOS` is
# replaced by "{{ bos_token }}" or "" per tokenizer; an empty system turn renders nothing where the
# family folds the system text into the first user turn.
_JINJA = {
    "chatml": "BOS{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
              "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}",
    "llama3": "BOS{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
              "+ message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "gemma": "BOS{% set ns = namespace(system='') %}{% for message in messages %}{% if message['role'] == 'system' %}"
             "{% set ns.system = message['content'] %}{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == "
             "'assistant' else message['role']) + '\\n' }}{% if ns.system and message['role'] == 'user' %}"
             "{{ ns.system + '\\n\\n' }}{% set ns.system = '' %}{% endif %}{{ message['content'] + '<end_of_turn>\\n' }}"
             "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    "mistral": "BOS{% set ns = namespace(system='') %}{% for message in messages %}{% if message['role'] == 'system' %}"
               "{% set ns.system = message['content'] %}{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
               "{% if ns.system %}{{ ns.system + '\\n\\n' }}{% set ns.system = '' %}{% endif %}"
               "{{ message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
               "{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
    "phi3": "BOS{% for message in messages %}{% if message['role'] != 'system' or message['content'] %}"
            "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    "plain": "BOS{% for message in messages %}{% if message['role'] == 'system' %}{% if message['content'] %}"
             "{{ message['content'] + '\\n\\n' }}{% endif %}{% elif message['role'] == 'user' %}"
             "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
             "{{ '### Response:\\n' + message['content'] + eos_token }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}",
}

# The special tokens a family needs as single tokens; None as turn end: the model's own EOS.
SPECIAL_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "mistral": (),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "plain": (),
}
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "mistral": None,
             "phi3": "<|end|>", "plain": None}

# How a template someone else wrote (the tokenizer's own, a .jinja file) is told apart: its turn markers.
_MARKERS = (("chatml", "<|im_start|>"), ("llama3", "<|start_header_id|>"), ("gemma", "<start_of_turn>"),
            ("phi3", "<|assistant|>"), ("mistral", "[INST]"), ("plain", "### Response:"))

# Ollama's Go templates over .Messages, rendering what the Jinja above renders (without BOS: Ollama adds it
# when the GGUF says the tokenizer does). EOS is the model's EOS text.
_GO = {
    "chatml": "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    "llama3": "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
              "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": '{{- $system := "" }}{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ else }}'
             '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
             '{{ if and $system (eq .Role "user") }}{{ $system }}\n\n{{ $system = "" }}{{ end }}'
             "{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n",
    "mistral": '{{- $system := "" }}{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}'
               '{{ else if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}'
               '{{ .Content }} [/INST]{{ else if eq .Role "assistant" }}{{ .Content }}EOS{{ end }}{{ end }}',
    "phi3": '{{- range .Messages }}{{ if or (ne .Role "system") .Content }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n'
            "{{ end }}{{ end }}<|assistant|>\n",
    "plain": '{{- range .Messages }}{{ if eq .Role "system" }}{{ if .Content }}{{ .Content }}\n\n{{ end }}'
             '{{ else if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
             '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}EOS{{ end }}{{ end }}### Response:\n',
}


class TemplateError(ConfigError):
    """A data.chat_template this tokenizer cannot use; the message names the key, the value and the fix."""


class ChatTemplate(BaseModel):
    """The chat template a run trains, evaluates and exports with, and why it was chosen."""

    family: str  # one of FAMILIES, or "custom" (a template no family matches)
    jinja: str
    turn_end: str  # the token that ends an assistant turn: generation stops on it
    eos: str  # the model's own EOS (the turn end of mistral and plain)
    bos: bool  # the template starts with BOS (the tokenizer adds one to plain text)
    reason: str  # e.g. "auto: the tokenizer has no chat template -> plain"

    @property
    def stops(self) -> list[str]:
        """Texts that end generation: the turn end, then the EOS when it is another token."""
        return list(dict.fromkeys([self.turn_end, self.eos]))

    def apply(self, tokenizer) -> None:
        """Make `tokenizer` speak this template; its EOS becomes the turn end, so every generate() and the
        merged model's generation config stop there, and its save_pretrained writes both."""
        tokenizer.chat_template = self.jinja
        if tokenizer.eos_token != self.turn_end:
            tokenizer.eos_token = self.turn_end
        if tokenizer.pad_token is None:
            tokenizer.pad_token = self.eos


def check_setting(value: str) -> str:
    """`data.chat_template` when it names a family or an existing .jinja file; else TemplateError."""
    if value in SETTINGS:
        return value
    if value.endswith(".jinja"):
        if not resolve_path(value).is_file():
            raise TemplateError(f"no such file: {resolve_path(value)}. Give the path of a Jinja chat template (relative "
                                "to the project root or absolute), or one of " + ", ".join(SETTINGS))
        return value
    raise TemplateError(f"unknown chat template {value!r}: use auto (the tokenizer's own, plain when it has none), "
                        f"a family ({', '.join(FAMILIES)}) or the path of a .jinja file")


def family_jinja(family: str, bos: bool) -> str:
    return _JINJA[family].replace("BOS", "{{ bos_token }}" if bos else "", 1)


def family_of(jinja: str) -> str:
    """The family whose turn markers `jinja` uses ("custom" when none)."""
    return next((name for name, marker in _MARKERS if marker in jinja), "custom")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before plain text (then pretraining saw it first, and so must we)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def resolve(setting: str, tokenizer) -> ChatTemplate:
    """The ChatTemplate `data.chat_template` = `setting` gives for `tokenizer` (its template, EOS and vocabulary)."""
    check_setting(setting)
    eos = tokenizer.eos_token
    if not eos:
        raise TemplateError(f"data.chat_template = {setting!r}: the tokenizer has no EOS token, so no answer could "
                            "end; set eos_token in the model dir's tokenizer_config.json")
    bos = adds_bos(tokenizer)
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if setting == "auto" and not own:
        return ChatTemplate(family="plain", jinja=family_jinja("plain", bos), turn_end=eos, eos=eos, bos=bos,
                            reason=f"auto: the tokenizer has no chat template -> plain (answers end with {eos})")
    if setting == "auto" or setting.endswith(".jinja"):
        jinja, why = (own, "auto: the tokenizer's own template") if setting == "auto" else (
            resolve_path(setting).read_text(), f"data.chat_template: {setting}")
        return foreign(jinja, eos, bos, why, has_token=lambda token: _single_token(tokenizer, token))
    missing = [t for t in SPECIAL_TOKENS[setting] if not _single_token(tokenizer, t)]
    if missing:
        raise TemplateError(f"data.chat_template = {setting!r}: the tokenizer has no {', '.join(missing)} token "
                            "(a new token would need an untrained embedding). Use auto or plain, or a base model "
                            f"whose tokenizer has the {setting} tokens")
    return ChatTemplate(family=setting, jinja=family_jinja(setting, bos), turn_end=TURN_END[setting] or eos, eos=eos,
                        bos=bos, reason=f"data.chat_template: {setting}")


def foreign(jinja: str, eos: str, bos: bool, why: str, has_token=lambda token: True) -> ChatTemplate:
    """A template someone else wrote (a tokenizer's, a file's, a GGUF's), with the family its markers name;
    its turn ends at the family's token when the tokenizer `has_token` it, else at EOS."""
    family = family_of(jinja)
    turn_end = TURN_END.get(family) or eos
    turn_end = turn_end if has_token(turn_end) else eos
    return ChatTemplate(family=family, jinja=jinja, turn_end=turn_end, eos=eos, bos=bos,
                        reason=f"{why} ({family}{', ends turns with ' + turn_end if turn_end != eos else ''})")


def _single_token(tokenizer, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False).input_ids) == 1


def ollama_template(template: ChatTemplate) -> str | None:
    """Ollama's Go TEMPLATE for the template's family (None for a custom template: nothing to translate)."""
    go = _GO.get(template.family)
    return go.replace("EOS", template.eos) if go else None


# --- Ollama: the Modelfile, checked by rendering it as Ollama would --------------------------------


def render(template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = True,
           bos_token: str | None = None) -> str:
    """The template's text for `messages`, rendered as transformers and llama-cpp-python render it
    (a sandboxed Jinja environment with trim_blocks and lstrip_blocks); BOS as given (default: none)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template.jinja).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                  bos_token=bos_token or "", eos_token=template.eos)


def default_system(template: ChatTemplate) -> str | None:
    """The system text the template inserts when a conversation has no system turn (None when it inserts none)."""
    mark, user = "\x00SYSTEM\x00", [{"role": "user", "content": "u"}]
    pre, _, post = render(template, [{"role": "system", "content": mark}, *user], False).partition(mark)
    bare = render(template, user, False)
    if not (bare.startswith(pre) and bare.endswith(post)) or len(bare) <= len(pre) + len(post):
        return None
    text = bare[len(pre): len(bare) - len(post)]
    return text if render(template, [{"role": "system", "content": text}, *user], False) == bare else None


def modelfile(template: ChatTemplate, gguf_name: str, system: str | None, conversation: list[dict],
              bos_token: str | None = None) -> str:
    """The Ollama Modelfile for a GGUF speaking `template`, trained with `system` as its system prompt ("" an
    empty system turn, None none). Checked before it is written: for `conversation` (a held-out prompt), with
    and without its system turn (as `ollama run` sends it), Ollama's prompt must be the GGUF template's text.
    `bos_token`: the BOS text Ollama puts first (the GGUF says its tokenizer adds one). TemplateError says why not."""
    go = ollama_template(template)
    if go is None:
        raise TemplateError(f"no Ollama translation for a {template.family} chat template "
                            f"(tuneline translates {', '.join(FAMILIES)}); set data.chat_template to one of them")
    if system == "":  # every training prompt had an empty system turn: serve one when the request has none
        empty = render(template, [{"role": "system", "content": ""}], False)
        if empty:
            go = '{{- if ne (index .Messages 0).Role "system" }}' + empty + "{{ end }}" + go
        system = None
    elif system is None:
        system = default_system(template)  # what training got for a prompt without a system turn
    expected = render(template, conversation, bos_token=bos_token)
    user_only = conversation[1:] if conversation and conversation[0]["role"] == "system" else conversation
    for sent in (conversation, user_only):
        served = (bos_token or "") + ollama_prompt(go, system, sent)
        if served != expected:
            raise TemplateError(f"the Ollama TEMPLATE would serve {served!r} where the GGUF's chat template "
                                f"renders {expected!r}")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in template.stops]
    return "\n".join([*lines, "PARAMETER temperature 0"]) + "\n"


def ollama_prompt(go: str, system: str | None, messages: list[dict]) -> str:
    """The prompt Ollama builds: SYSTEM goes first when the request has no system message, then the Go
    TEMPLATE renders .Messages (with .Role and .Content) and .System."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in msgs],
            "System": "\n\n".join(m["content"] for m in msgs if m["role"] == "system")}
    return render_go(go, data)


# A Go text/template subset: text, {{- -}} trimming, range, if / else if / else, variables ($x := / $x =),
# fields (.Role, $.System), string and int literals, (sub expressions) and eq ne and or not index len.
_ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.DOTALL)
_TOKEN = re.compile(r'\(|\)(?:\.\w+)*|"(?:[^"\\]|\\.)*"|[^\s()]+')  # "(...).Role": a field of the result


def render_go(template: str, data: dict) -> str:
    """`template` rendered with `data` as Go's text/template would (the subset above; anything else raises)."""
    nodes, pos, text = [], 0, template
    for m in _ACTION.finditer(text):
        nodes.append(("text", text[pos:m.start()].rstrip() if m.group(1) else text[pos:m.start()]))
        nodes.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    nodes.append(("text", text[pos:]))
    body, rest = _parse(nodes, 0)
    if rest != len(nodes):
        raise TemplateError(f"unbalanced {{{{ end }}}} in the Go template at {nodes[rest][1]!r}")
    out: list[str] = []
    _run(body, data, [{"$": data}], out)
    return "".join(out)


def _parse(nodes: list, i: int, stop=("end",)) -> tuple[list, int]:
    """Nodes from i up to an action in `stop` (not consumed) as a tree: ("text", s), ("out", expr),
    ("if", [(expr, body)...], else_body), ("range", expr, body)."""
    out = []
    while i < len(nodes):
        kind, value = nodes[i]
        word = value.split(maxsplit=1)[0] if kind == "action" and value else ""
        if kind == "text":
            out.append(("text", value))
        elif word in stop or (word == "else" and "else" in stop):
            return out, i
        elif word == "if":
            branches, otherwise, cond = [], [], value[2:].strip()
            while True:
                body, i = _parse(nodes, i + 1, ("end", "else"))
                branches.append((cond, body))
                action = nodes[i][1]
                if action.startswith("else if"):
                    cond = action[len("else if"):].strip()
                    continue
                if action == "else":
                    otherwise, i = _parse(nodes, i + 1, ("end",))
                break
            out.append(("if", branches, otherwise))
        elif word == "range":
            body, i = _parse(nodes, i + 1, ("end",))
            out.append(("range", value[5:].strip(), body))
        else:
            out.append(("out", value))
        i += 1
    return out, i


def _run(body: list, dot, scopes: list[dict], out: list[str]) -> None:
    for node in body:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "if":
            chosen = next((b for cond, b in node[1] if _truthy(_expr(cond, dot, scopes))), node[2])
            _run(chosen, dot, [*scopes, {}], out)
        elif node[0] == "range":
            for item in _expr(node[1], dot, scopes) or []:
                _run(node[2], item, [*scopes, {}], out)
        else:
            value = _expr(node[1], dot, scopes)
            if value is not None:
                out.append(value if isinstance(value, str) else str(value))


def _expr(expr: str, dot, scopes: list[dict]):
    """One action: `$x := e` / `$x = e` (renders nothing), or a command (function call or operand)."""
    m = re.match(r"^(\$\w+)\s*(:=|=)\s*(.+)$", expr, re.DOTALL)
    if m:
        value = _expr(m.group(3), dot, scopes)
        if m.group(2) == ":=":
            scopes[-1][m.group(1)] = value
        else:
            next(s for s in reversed(scopes) if m.group(1) in s)[m.group(1)] = value
        return None
    tokens = _TOKEN.findall(expr)
    value, rest = _command(tokens, 0, dot, scopes)
    if rest != len(tokens):
        raise TemplateError(f"cannot read the Go template action {{{{ {expr} }}}}")
    return value


_FUNCS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a), "len": len,
    "index": lambda a, i: a[i], "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
}


def _command(tokens: list[str], i: int, dot, scopes: list[dict]):
    """A function call (`eq a b`) or a single operand, from tokens[i] to the closing ")" or the end."""
    if tokens[i] in _FUNCS:
        name, args, i = tokens[i], [], i + 1
        while i < len(tokens) and not tokens[i].startswith(")"):
            value, i = _operand(tokens, i, dot, scopes)
            args.append(value)
        return _FUNCS[name](*args), i
    return _operand(tokens, i, dot, scopes)


def _operand(tokens: list[str], i: int, dot, scopes: list[dict]):
    token = tokens[i]
    if token == "(":
        value, i = _command(tokens, i + 1, dot, scopes)
        for name in tokens[i][1:].split(".")[1:]:  # ")" or ").Field.Field"
            value = value[name]
        return value, i + 1
    if token.startswith('"'):
        return token[1:-1].encode().decode("unicode_escape"), i + 1
    if token.lstrip("-").isdigit():
        return int(token), i + 1
    if token == ".":
        return dot, i + 1
    head, *fields = token.split(".") if not token.startswith(".") else ["", *token[1:].split(".")]
    value = dot if head == "" else next(s[head] for s in reversed(scopes) if head in s)
    for name in fields:
        value = value[name]
    return value, i + 1


def _truthy(value) -> bool:
    return bool(value)
