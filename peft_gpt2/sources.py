"""Where records come from: a JSON/JSONL file, a URL or a Hugging Face data set, read with line-numbered errors.

    python -c "from peft_gpt2.sources import read_source; print(len(read_source('data/sherlock_qa.json')))"
"""

from __future__ import annotations

import json
from pathlib import Path

from peft_gpt2.errors import PeftGpt2Error


def decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PeftGpt2Error(f"{source}: line {line}: not UTF-8 text (byte {err.start}); re-save it as UTF-8") from None


def _parse_json(text: str, source: str) -> list:
    stripped = text.lstrip()
    if not stripped:
        raise PeftGpt2Error(f"{source}: the file is empty")
    if stripped[0] == "[" or source.endswith(".json"):
        try:
            data = json.loads(text)
        except (RecursionError, ValueError) as err:  # nesting too deep; an integer past Python's digit limit
            if not isinstance(err, json.JSONDecodeError):
                raise PeftGpt2Error(f"{source}: unreadable JSON ({type(err).__name__}: {err})") from None
            raise PeftGpt2Error(
                f"{source}: line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})"
            ) from None
        if not isinstance(data, list):
            raise PeftGpt2Error(
                f"{source}: expected a JSON list of records, got a {type(data).__name__}"
                + (f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else "")
            )
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (RecursionError, ValueError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else f"{type(err).__name__}: {err}"
                raise PeftGpt2Error(f"{source}: line {lineno}: malformed JSON Lines record ({reason})") from None
    return records


def read_text(source: str) -> str:
    """The UTF-8 text of a file or an http(s) URL."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return decode(response.read(), source)
        except OSError as err:
            raise PeftGpt2Error(f"could not download {source}: {err}; download it and use the file") from None
    path = Path(source).expanduser()
    if not path.is_file():
        raise PeftGpt2Error(f"data file {source} does not exist")
    return decode(path.read_bytes(), source)


def is_hub_name(source: str, file_suffixes: tuple[str, ...]) -> bool:
    """Whether ``source`` names a Hugging Face data set: not a URL, not an existing path, not path-like, and not
    ending like a file (a missing ``data.json`` is a missing file, not a hub name)."""
    path = Path(source).expanduser()
    path_like = source.startswith(("http://", "https://", ".", "/", "~")) or path.suffix in file_suffixes
    return not (path_like or path.exists())


def read_source(source: str) -> list:
    """The records in ``source`` (a JSON/JSONL file, an http(s) URL, or a hub data set name), not yet validated."""
    if is_hub_name(source, (".json", ".jsonl")):
        return _read_hub_dataset(source)
    return _parse_json(read_text(source), source)


def _read_hub_dataset(name: str) -> list:
    """A Hugging Face datasets name such as ``tatsu-lab/alpaca`` (train split)."""
    import datasets

    try:
        return list(datasets.load_dataset(name, split="train"))
    except Exception as err:  # datasets raises many types: network, missing, bad config
        raise PeftGpt2Error(
            f"could not load data set {name!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); offline, point data.path at a JSON/JSONL file"
        ) from None
