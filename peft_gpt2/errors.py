"""The one exception type a user can cause, and how an operating-system refusal is told. The CLI prints either
and exits 2, with no traceback."""


class PeftGpt2Error(Exception):
    """A problem with the user's input (recipe, data file, model source, adapter folder), said plainly.

    The message names the file, record or key at fault and what to do about it.
    """


def os_error(err: OSError) -> str:
    """``<file>: <reason>`` (``<file> -> <other>`` for a rename), as ``ls`` or ``cp`` would say it."""
    files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or " ".join(str(err).split()) or type(err).__name__  # one line
    return f"{files}: {reason}" if files else reason


def check_key(ok: bool, key: str, message: str) -> None:
    """Refuse a recipe value: ``recipe key <key>: <message>``, the form every recipe check shares."""
    if not ok:
        raise PeftGpt2Error(f"recipe key {key}: {message}")
