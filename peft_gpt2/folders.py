"""Publishing a finished output folder in one step, so a crash never leaves one that looks complete."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def publish_folder(src: Path, dst: Path) -> None:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is set aside first, removed only after."""
    src.chmod(0o755)  # tempfile.mkdtemp makes folders private
    old = dst.with_name(f".{dst.name}.old-{time.time_ns()}")
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
