"""Merge an adapter into its base: a standalone model folder that loads without PEFT.

peft-gpt2 merge --adapter adapters/quickstart --out merged/quickstart
"""

from __future__ import annotations

import shutil
from pathlib import Path

from peft_gpt2.adapters.folder import attach, base_of, folder_kind
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.methods import check_mergeable
from peft_gpt2.run_folder import TEST_SPLIT, Provenance, held_out_records, staged_folder


def merge_adapter(
    path: str | Path,
    out_dir: str | Path,
    *,
    base: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    allow_pickle: bool = False,
    name: str | None = None,
    template: str | None = None,
    source: str | None = None,
) -> Path:
    """Merge the adapter at ``path`` into a freshly loaded float32 base and save a plain model folder.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads the result without PEFT. The folder (safetensors weights,
    tokenizer, ``peft_gpt2.json``, and the adapter's ``test.json`` so ``compare --data test`` still works) is
    written beside ``out_dir`` and renamed into place when complete, so a crash never leaves a half-written model.

    Args:
        path (`str` or `Path`): the adapter folder.
        out_dir (`str` or `Path`): the model folder to create.
        base (`str`, *optional*): the base to merge into (``models.loading.load_base`` name); default: the
            adapter's record.
        overwrite (`bool`, defaults to `False`): replace an existing ``out_dir``.
        force, allow_pickle (`bool`, default `False`): as for ``attach``.
        name, template, source (`str`, *optional*): recorded in ``peft_gpt2.json``; default: the adapter's own
            name and template, and ``path``.
    """
    from peft_gpt2.models.loading import load_base

    path, out = Path(path), Path(out_dir)
    if out.exists() and not overwrite:
        raise PeftGpt2Error(f"{out} already exists; choose another folder or pass overwrite=True (--overwrite)")
    if folder_kind(path, allow_pickle=allow_pickle) != "adapter":  # before the (slow) base load
        raise PeftGpt2Error(f"{path} is a full model folder already; there is no adapter to merge")
    check_mergeable(path)
    provenance = Provenance.read(path)
    base = base or base_of(path)
    model, tokenizer = load_base(base)
    merged = attach(model, path, "merged", force=force, allow_pickle=allow_pickle).merge_and_unload()
    with staged_folder(out, overwrite=overwrite) as stage:
        merged.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        if held_out_records(path):
            shutil.copy(path / TEST_SPLIT, stage / TEST_SPLIT)
        adapter = name or provenance.name or path.name
        template = template or provenance.template
        provenance.merge(out.name, base, merged.config, template, adapter, source or str(path)).write(stage)
    return out
