"""Publishing outputs in one step (a folder renamed, a file replaced), so a crash never leaves a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
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
