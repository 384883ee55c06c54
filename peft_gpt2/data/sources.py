"""Where records and settings come from: a JSON/JSONL file, a URL or a Hugging Face data set, and YAML files, read
with bounded cost and line-numbered errors.

    python -c "from peft_gpt2.data.sources import read_source; print(len(read_source('data/sherlock_qa.json')))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from peft_gpt2.errors import PeftGpt2Error


def unreadable(err: ValueError | RecursionError) -> str:
    """Why a parser gave up, in the file's terms: nesting past Python's recursion limit, a 4300+ digit integer."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split("; use sys.set_int_max_str_digits")[0]  # Python's advice is not the user's fix


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
                raise PeftGpt2Error(f"{source}: unreadable JSON ({unreadable(err)})") from None
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
                reason = err.msg if isinstance(err, json.JSONDecodeError) else unreadable(err)
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
    if not path.exists():
        raise PeftGpt2Error(f"data file {source} does not exist")
    return decode(path.read_bytes(), source)  # an OSError (a folder, no permission) is the CLI's one-line message


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


# YAML aliases share one object, so a 1 KB file can stand for a billion values ("billion laughs"): loading is cheap,
# but printing, checking or saving the result expands every copy. A recipe or pipeline holds a few hundred values.
MAX_YAML_VALUES = 10_000


def bounded(value: Any, where: str, limit: int = MAX_YAML_VALUES) -> Any:
    """``value`` if it holds at most ``limit`` values counted with every alias expanded, else our error.

    The walk stops at the limit, so an alias bomb (or a structure that contains itself) costs ``limit`` steps.
    """
    todo, seen = [value], 0
    while todo:
        item = todo.pop()
        seen += 1
        if seen > limit:
            raise PeftGpt2Error(
                f"{where}: expands to more than {limit:,} values (YAML anchors and aliases nested in each other?); "
                "write the values out"
            )
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list | tuple | set):
            todo.extend(item)
    return value


def load_yaml(path: Path, what: str) -> Any:
    """The YAML file ``path`` (a ``what``: recipe, pipeline), parsed safely, its size checked (``bounded``)."""
    if not path.exists():
        raise PeftGpt2Error(f"{what} {path} does not exist")
    text = decode(path.read_bytes(), str(path))  # an OSError (a folder, no permission): the CLI's one-line message
    try:
        return bounded(yaml.safe_load(text), f"{what} {path}")
    except yaml.YAMLError as err:
        raise PeftGpt2Error(f"{what} {path} is not valid YAML: {err}") from None
    except (ValueError, RecursionError) as err:  # a 4300+ digit integer, a bad date; nesting past the stack
        raise PeftGpt2Error(f"{what} {path} is not valid YAML: {unreadable(err)}") from None
