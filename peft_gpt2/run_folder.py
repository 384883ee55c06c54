"""The run folder: the one contract between training and everything after it.

    python -c "from peft_gpt2.run_folder import Provenance; print(Provenance.read('adapters/quickstart'))"

A run folder (``adapters/<name>/``, or a merged model folder) is a PEFT adapter or a plain model folder plus the
files named here. This module owns their names, the typed provenance record (``peft_gpt2.json``) and publishing a
folder or file in one step; no other module builds or parses that JSON by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_gpt2.data.sources import unreadable
from peft_gpt2.data.templates import DEFAULT_TEMPLATE
from peft_gpt2.errors import PeftGpt2Error

PROVENANCE = "peft_gpt2.json"  # the provenance record
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: the folder is an adapter
MODEL_CONFIG = "config.json"  # transformers': the folder is a whole model (a full fine-tune, a merge)
RECIPE = "recipe.yaml"  # the fully resolved recipe
TEST_SPLIT = "test.json"  # the held-out records (instructions) that ``compare --data test`` scores
TRAIN_LOG = "train_log.json"  # the Trainer's log history
STALE_AFTER_S = 600  # a staging folder unchanged this long is a killed run's, not one being written


@dataclass
class Provenance:
    """What made a run folder: base, method, data, cost, and the results seen during training.

    Every field is optional, so a folder trained elsewhere reads as an empty record; ``template`` falls back to
    the default template, the one a run without a recorded template was trained with.
    """

    name: str | None = None
    method: str | None = None  # full | lora | lora-8bit | lora-merged | lora-combined
    base_model: str | None = None  # what ``models.loading.load_base`` loads (hub id, folder, .gguf, preset)
    base_model_path: str | None = None
    base_config_fingerprint: str | None = None  # ``models.loading.config_fingerprint`` of the base config
    model_type: str | None = None
    template: str = DEFAULT_TEMPLATE
    data_format: str | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    precision: str | None = None
    train_time_s: float | None = None
    train_steps: int | None = None
    tokens_seen: int | None = None  # training tokens the Trainer counted (non-padding), for equal-budget comparisons
    train_loss: float | None = None
    validation_loss_before: float | None = None
    validation_loss_after: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    processes: int | None = None
    distributed: str | None = None  # accelerate's mode: NO, MULTI_CPU, MULTI_GPU, FSDP, ...
    data: dict[str, Any] = field(default_factory=dict)  # counts: records read, dropped, split sizes
    recipe: dict[str, Any] = field(default_factory=dict)  # the resolved recipe
    versions: dict[str, str] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)  # every distribution in the environment that trained
    merged_adapter: str | None = None  # merge: the adapter's name
    merged_from: str | None = None  # merge: the adapter's folder
    adapter_provenance: dict[str, Any] | None = None  # merge: the adapter's own record
    combined_from: dict[str, float] | None = None  # combine: {adapter: weight}
    combination_type: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @classmethod
    def read(cls, folder: str | Path) -> Provenance:
        """The folder's record; an empty one (default template) for a folder without ``peft_gpt2.json``.

        Keys this version does not know are ignored, so a record written by a newer version still loads.
        """
        file = Path(folder) / PROVENANCE
        if not file.exists():
            return cls(created="")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # malformed, not UTF-8, nested past the stack, 4300+ digits
            raise PeftGpt2Error(f"{file}: not valid JSON ({unreadable(err)})") from None
        if not isinstance(data, dict):
            raise PeftGpt2Error(f"{file}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        record = {k: v for k, v in data.items() if k in hints and v is not None}
        for key, value in record.items():  # a folder from elsewhere: a wrong type would fail far from here
            if not isinstance(value, kinds := _json_types(hints[key])) or isinstance(value, bool) != (bool in kinds):
                wanted = " or ".join(k.__name__ for k in kinds)
                raise PeftGpt2Error(f"{file}: {key} must be {wanted}, got {value!r:.60}")
        return cls(**record)

    def combination(self, name: str, weights: dict[str, float], combination_type: str) -> Provenance:
        """The record of ``name``, a weighted combination of adapters of which this is the first's record: the same
        base and template, and what was combined how."""
        return Provenance(
            name=name,
            method="lora-combined",
            base_model=self.base_model,
            base_model_path=self.base_model_path,
            base_config_fingerprint=self.base_config_fingerprint,
            model_type=self.model_type,
            template=self.template,
            combined_from=dict(weights),
            combination_type=combination_type,
        )

    def merge(self, name: str, base: str, config: Any, template: str, adapter: str, source: str) -> Provenance:
        """The record of a model folder ``name``: this adapter (called ``adapter``, from ``source``) merged into
        ``base`` (``config``: the merged model's config), the adapter's own record kept whole."""
        from peft_gpt2.models.loading import config_fingerprint

        return Provenance(
            name=name,
            method="lora-merged",
            base_model=base,
            base_config_fingerprint=config_fingerprint(config),
            model_type=config.model_type,
            template=template,
            merged_adapter=adapter,
            merged_from=source,
            adapter_provenance=self.to_dict(),
        )

    @property
    def full_fine_tune(self) -> bool:
        """Whether the run trained every weight (its folder is a model, not an adapter)."""
        return self.recipe.get("method") == "full"

    @property
    def generation(self) -> dict[str, Any] | None:
        """The recipe's ``generation`` section (how eval and compare decode this run), if it recorded one."""
        return self.recipe.get("generation")

    def write(self, folder: str | Path) -> Path:
        """Write ``peft_gpt2.json`` into ``folder`` (atomically)."""
        file = Path(folder) / PROVENANCE
        write_atomic(file, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"))
        return file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def requirements(self) -> str:
        """A pip requirements file of the versions that made this run (``installed``; ``versions`` for a folder
        written before it was recorded). torch is left as a comment: its build (CPU, a CUDA version) is the
        user's to pick, and a local label like ``+cpu`` is not on PyPI."""
        found = self.installed or {k: v for k, v in self.versions.items() if k != "python"}
        python = self.versions.get("python", "unknown")
        lines = [f"# the versions that made this run ({self.created or 'date unknown'}; Python {python})"]
        if not self.installed:
            lines.append("# recorded before full environments were: the main packages only")
        for name, ver in sorted(found.items(), key=lambda kv: kv[0].lower()):
            if name.lower() in ("torch", "peft-gpt2", "peft_gpt2"):
                lines.insert(1, f"# {name}=={ver}: install it first, the build for your machine")
            else:
                lines.append(f"{name}=={ver}")
        return "\n".join(lines) + "\n"


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON types a field's annotation allows: ``float | None`` -> float or int, ``dict[str, Any]`` -> dict."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(t) or t for t in options if t is not type(None))
    return kinds + ((int,) if float in kinds else ())


def kind_of(folder: str | Path) -> str | None:
    """``"adapter"`` (a PEFT folder), ``"model"`` (a whole model folder) or ``None``: decided by the files, in this
    one place, for loading, merging, pushing and pipelines alike."""
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG).is_file():
        return "adapter"
    return "model" if (folder / MODEL_CONFIG).is_file() else None


def held_out_records(folder: str | Path) -> Path | None:
    """The folder's held-out records, if it has them (a text-corpus run or a folder trained elsewhere has none)."""
    path = Path(folder) / TEST_SPLIT
    return path if path.exists() else None


@contextlib.contextmanager
def staged_folder(out: Path, *, overwrite: bool):
    """Yield a temporary folder beside ``out``; publish it as ``out`` if the block finishes, else remove it.

    The block writes a complete folder there; a crash never leaves one that looks complete. ``out`` appearing
    while the block ran (another run of the same name) is refused unless ``overwrite``.
    """
    check_writable(out.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield stage
        if out.exists() and not overwrite:
            raise PeftGpt2Error(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        publish_folder(stage, out, overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish_folder(src: Path, dst: Path, *, overwrite: bool = True) -> None:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is set aside first, removed only after.

    Without ``overwrite`` an existing ``dst`` is refused, atomically: of two runs publishing one new name at once,
    the first rename wins and the other is told, so neither silently replaces the other.
    """
    src.chmod(0o755)  # tempfile.mkdtemp makes folders private
    if not overwrite:
        try:
            src.rename(dst)  # fails when dst exists and is not empty; an empty leftover folder is replaced
        except OSError:
            raise PeftGpt2Error(f"{dst} was written by another run while this one trained; not replaced") from None
        return
    old = dst.with_name(f".{dst.name}.old-{time.time_ns()}")
    if dst.exists():
        dst.rename(old)
    try:
        src.rename(dst)
    except OSError:
        if old.exists():
            old.rename(dst)  # the earlier folder stays where it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_writable(folder: Path) -> None:
    """Create ``folder`` and a file in it (then remove the file): an output that cannot be written fails now, in
    one line naming the path, not after training."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise PeftGpt2Error(f"cannot write to {folder}: {blocker} is a file, not a folder; choose another output_dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # names the component that could not be made
        raise PeftGpt2Error(f"cannot create the folder {err.filename or folder}: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PeftGpt2Error(f"cannot write to {folder}: {err.strerror or err}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temp file in the same folder, then rename: readers see the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o644)  # mkstemp makes 0600; a report is meant to be read by others
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_stages(out: Path, *, stale_after_s: float = STALE_AFTER_S) -> tuple[list[Path], list[Path]]:
    """Staging folders of ``out`` a killed run left (``.{name}.tmp-*``; ``.{name}.old-*`` once ``out`` exists),
    split into (stale, recent) by the newest change to anything in them.

    Another run of the same name may be writing a ``.tmp-`` folder right now, on this machine or another one
    sharing the folder, so a pid or lock would not tell: a save writes its files one after another, so a folder
    where nothing changed for ``stale_after_s`` seconds (10 minutes) is no longer being written.
    """
    name = glob.escape(out.name)
    found = [*out.parent.glob(f".{name}.tmp-*"), *(out.parent.glob(f".{name}.old-*") if out.exists() else ())]
    stale, recent, now = [], [], time.time()
    for folder in sorted(p for p in found if p.is_dir() and not p.is_symlink()):
        try:
            age = now - newest_change(folder)
        except OSError:  # removed meanwhile by the run that made it
            continue
        (stale if age > stale_after_s else recent).append(folder)
    return stale, recent


def newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` and everything under it (entries vanishing meanwhile skipped)."""
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest
