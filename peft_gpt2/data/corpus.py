"""Plain-text domain corpora (e.g. Project Gutenberg books) for continued pretraining before instruction tuning.

    python -c "from peft_gpt2.data.corpus import load_corpus; print([len(d.text.split()) for d in load_corpus('b/')])"

Books are cleaned (licence header/footer, contents table and hard wraps removed), held out by position (the end
of each book is validation, never a random neighbour of a training block) and packed into fixed-length blocks
with an end-of-text token between books, so every token is trained on and no block is padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from peft_gpt2.data.rows import TrainingRows
from peft_gpt2.data.sources import read_text
from peft_gpt2.errors import PeftGpt2Error

_START = re.compile(r"^[ \t]*\*{3}[ \t]*START[ \t]+OF\b.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*(\*{3}[ \t]*END[ \t]+OF\b|End of (the )?Project Gutenberg).*$", re.IGNORECASE | re.MULTILINE)
_CONTENTS = re.compile(r"^\s*(table\s+of\s+)?contents\s*[.:]?\s*$", re.IGNORECASE)
_FRONT_JUNK = re.compile(r"cover\s*$|(produced by|e-?text prepared by|transcribed (from|by))\b", re.IGNORECASE)
_GAP = re.compile(r"\n[ \t]*\n")  # a blank line: paragraphs end here
_SPACE = re.compile(r"\s*")
_CONTENTS_SEARCH_LINES = 300  # a contents heading further in is left alone: it is not front matter
_CONTENTS_MAX_LINES = 300  # a "list" longer than this is prose with a stray heading, not a contents table
_PROSE_LINE_CHARS = 60  # title pages and contents entries are short; hard-wrapped prose lines are ~70 characters


@dataclass
class Document:
    """One book (or text file) of a corpus: where it came from, and its cleaned text."""

    name: str
    text: str


def _drop_contents(lines: list[str]) -> list[str]:
    """Drop a contents table (and a bare title page before it) near the start; keep everything else.

    Rule: a line reading "Contents" (or "Table of Contents") in the first 300 lines starts the table; the table is
    the list of entries after it, ending at the first gap of two or more blank lines after an entry (Gutenberg puts
    several blank lines before the first chapter heading). If no such gap comes within 300 lines, nothing is dropped.
    The lines before the heading are dropped too when none of them is prose (a line of 60+ characters), i.e. they
    are just the title, author and a "cover" image tag; a preface there is kept.
    """
    head = next((i for i, line in enumerate(lines[:_CONTENTS_SEARCH_LINES]) if _CONTENTS.match(line)), None)
    if head is None:
        return lines
    end, blanks, seen_entry = None, 0, False
    for i in range(head + 1, min(len(lines), head + 1 + _CONTENTS_MAX_LINES)):
        if lines[i].strip():
            if seen_entry and blanks >= 2:
                end = i
                break
            seen_entry, blanks = True, 0
        else:
            blanks += 1
    if end is None:
        return lines
    front = lines[:head]
    if not any(len(line.strip()) >= _PROSE_LINE_CHARS for line in front):
        front = []
    return front + lines[end:]


def _paragraphs(text: str) -> list[str]:
    """Blank-line-separated paragraphs, each with its hard-wrapped lines joined and whitespace runs collapsed."""
    paragraphs = (" ".join(block.split()) for block in re.split(r"\n[ \t]*\n", text))
    return [p for p in paragraphs if p]


def strip_gutenberg(text: str) -> str:
    """Return the book's own text: Gutenberg header, licence footer and contents table removed, wraps joined.

    Everything up to and including the ``*** START OF ...`` line and from the ``*** END OF ...`` line (or an older
    "End of the Project Gutenberg EBook" line) on is dropped; so are a leading "Produced by ..." credit, a leading
    "cover" image tag and the contents table (see ``_drop_contents``). Text without the markers is kept whole.
    Lines within a paragraph are joined with one space (hard wraps at ~70 columns would otherwise teach the model
    to break lines mid-sentence) and paragraphs are separated by exactly one blank line.

    Args:
        text: A whole book as read from disk; ``\\r\\n`` line endings are fine.

    Returns:
        The cleaned text, or ``""`` when nothing is left.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text)
    if end and (start or "gutenberg" in end.group(0).lower()):
        text = text[: end.start()]
    cut = 0  # past leading "Produced by" credits and "cover" tags; searched in place (a copy each was quadratic)
    while (gap := _GAP.search(text, at := _SPACE.match(text, cut).end())) and _FRONT_JUNK.match(text, at, gap.start()):
        cut = gap.end()
    text = text[cut:]
    return "\n\n".join(_paragraphs("\n".join(_drop_contents(text.split("\n")))))


def load_corpus(sources: list[str] | str) -> list[Document]:
    """Read and clean every book named by ``sources``, in order.

    Args:
        sources: One or more of: a ``.txt`` file, a folder (its ``*.txt`` files, sorted by name), an http(s) URL.

    Returns:
        One ``Document`` per file, its text passed through ``strip_gutenberg``.

    Raises:
        PeftGpt2Error: A path does not exist, a folder holds no ``.txt`` file, or a file has no text left.
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise PeftGpt2Error("no corpus given: name at least one .txt file, folder of .txt files or URL")
    names: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if source.startswith(("http://", "https://")) or path.is_file():
            names.append(source)
        elif path.is_dir():
            files = sorted((p for p in path.glob("*.txt") if p.is_file()), key=lambda p: p.name)
            if not files:
                raise PeftGpt2Error(f"corpus folder {source} has no .txt files; put the books there as UTF-8 .txt")
            names.extend(str(p) for p in files)
        else:
            raise PeftGpt2Error(f"corpus file or folder {source} does not exist")
    docs = []
    for name in names:
        text = strip_gutenberg(read_text(name))
        if not text:
            raise PeftGpt2Error(
                f"{name}: no text left after removing the Gutenberg header, footer and contents; "
                "check it is a plain-text book, or leave it out"
            )
        docs.append(Document(name, text))
    return docs


def split_by_position(docs: list[Document], validation_fraction: float = 0.05) -> tuple[list[Document], list[Document]]:
    """Hold out the end of every document for validation.

    A random split of packed blocks would put validation text next to the training text it continues, so the
    model would be scored on passages it has, in effect, read. Cutting each book at its last
    ``validation_fraction`` (at the first paragraph boundary at or after that point) keeps them apart.

    Args:
        docs: Cleaned documents, paragraphs separated by ``"\\n\\n"``.
        validation_fraction: Share of each document's characters to hold out, in ``[0, 1)``.

    Returns:
        ``(train, validation)``; a document too short to cut (one paragraph) stays whole in train.
    """
    if not 0 <= validation_fraction < 1:
        raise PeftGpt2Error(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    train, validation = [], []
    for doc in docs:
        position = len(doc.text) * (1 - validation_fraction)
        cut = len(doc.text)
        offset = 0
        for paragraph in doc.text.split("\n\n"):
            if offset >= position:
                cut = offset
                break
            offset += len(paragraph) + 2
        if doc.text[:cut].strip():
            train.append(Document(doc.name, doc.text[:cut].rstrip("\n")))
        if doc.text[cut:].strip():
            validation.append(Document(doc.name, doc.text[cut:]))
    return train, validation


def pack_blocks(token_ids: list[list[int]], block_size: int, eos_token_id: int) -> tuple[list[list[int]], dict]:
    """Concatenate documents, each followed by ``eos_token_id``, and cut the stream into ``block_size`` blocks.

    The eos marks where one book ends and the next begins, so the model does not learn false continuations.
    The final partial block is dropped rather than padded: padding would waste compute and skew the loss.

    Returns:
        ``(blocks, stats)`` with stats ``{"tokens": total incl. eos, "blocks": n, "dropped_tail_tokens": k}``.
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise PeftGpt2Error(f"block_size must be an integer of at least 2, got {block_size!r}")
    stream: list[int] = []
    for ids in token_ids:
        stream.extend(ids)
        stream.append(eos_token_id)
    n_blocks = len(stream) // block_size
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    stats = {"tokens": len(stream), "blocks": n_blocks, "dropped_tail_tokens": len(stream) - n_blocks * block_size}
    return blocks, stats


def corpus_blocks(docs: list[Document], tokenizer, block_size: int) -> tuple[list[list[int]], dict]:
    """Tokenize documents (no special tokens added) and ``pack_blocks`` them with the tokenizer's eos token."""
    if tokenizer.eos_token_id is None:
        raise PeftGpt2Error("the tokenizer has no eos token to separate documents; set tokenizer.eos_token")
    token_ids = [tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"] for doc in docs]
    return pack_blocks(token_ids, block_size, tokenizer.eos_token_id)


def corpus_rows(path: str, tokenizer, block_size: int, validation_fraction: float) -> TrainingRows:
    """Training and validation blocks of ``block_size`` tokens (loss on every token) from a corpus, and counts.

    Validation text is the end of each document rather than random blocks, so it never neighbours training text.
    """
    train_docs, val_docs = split_by_position(load_corpus(path), validation_fraction)
    train_blocks, train_stats = corpus_blocks(train_docs, tokenizer, block_size)
    val_blocks, val_stats = corpus_blocks(val_docs, tokenizer, block_size) if val_docs else ([], {})
    if not train_blocks:
        raise PeftGpt2Error(f"{path}: fewer than data.max_length={block_size} tokens of training text")
    stats = {
        "documents": len(train_docs),
        **{f"train_{k}": v for k, v in train_stats.items()},
        **{f"validation_{k}": v for k, v in val_stats.items()},
    }
    return TrainingRows([{"input_ids": b} for b in train_blocks], [{"input_ids": b} for b in val_blocks], [], stats)
