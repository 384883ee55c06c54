"""Domain corpora: Gutenberg cleaning, loading errors that name the path, leak-free splits and exact block packing."""

from __future__ import annotations

import pytest

from peft_gpt2.data.corpus import Document, corpus_blocks, load_corpus, pack_blocks, split_by_position, strip_gutenberg
from peft_gpt2.errors import PeftGpt2Error

BOOK = """\ufeffThe Project Gutenberg eBook of The Tiny Casebook
\r
This eBook is for the use of anyone anywhere in the United States and\r
most other parts of the world at no cost and with almost no restrictions.\r
\r
Title: The Tiny Casebook\r
Release date: March 1, 1999 [eBook #99999]\r
\r
***START OF THE PROJECT GUTENBERG EBOOK THE TINY CASEBOOK ***\r
\r
cover\r
\r
\r
The Tiny Casebook\r
\r
by A. Writer\r
\r
\r
Contents\r
\r
   I.   The Lost Umbrella\r
   II.  The Second Umbrella\r
\r
\r
\r
\r
I. THE LOST UMBRELLA\r
\r
It was a dark and stormy night when my   friend first\r
spoke of the umbrella. He had lost it,\r
he said, on the omnibus.\r
\r
    "Dear Sir,--I have your umbrella.\r
    Yours, X."\r
\r
\r
II. THE SECOND UMBRELLA\r
\r
The second umbrella was never found.\r
\r
*** END OF THE PROJECT GUTENBERG EBOOK THE TINY CASEBOOK ***\r
\r
Updated editions will replace the previous one. START: FULL LICENSE\r
Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works\r
"""

EXPECTED = """I. THE LOST UMBRELLA

It was a dark and stormy night when my friend first spoke of the umbrella. He had lost it, he said, on the omnibus.

"Dear Sir,--I have your umbrella. Yours, X."

II. THE SECOND UMBRELLA

The second umbrella was never found."""


def test_strip_gutenberg_drops_header_licence_and_contents_and_joins_wraps():
    text = strip_gutenberg(BOOK)
    assert text == EXPECTED
    for word in ("Gutenberg", "eBook", "LICENSE", "Release date", "Contents", "cover", "by A. Writer"):
        assert word not in text


def test_strip_gutenberg_contents_rule_keeps_a_preface():
    book = (
        "*** start of this project gutenberg ebook x ***\n\nX\n\nPreface\n\n"
        "A preface long enough to count as prose, with well over sixty characters\nin its first line.\n\n"
        "Contents\n\n The Case\n The Other Case\n\n\n\nThe Case\n\nBody text.\n\n*** end of this project gutenberg ***"
    )
    assert strip_gutenberg(book).split("\n\n") == [
        "X",
        "Preface",
        "A preface long enough to count as prose, with well over sixty characters in its first line.",
        "The Case",
        "Body text.",
    ]


def test_text_without_markers_is_kept_whole_and_normalized():
    text = "  A line\nwrapped   here.\n\n\n\nNext  paragraph.\n \n"
    assert strip_gutenberg(text) == "A line wrapped here.\n\nNext paragraph."
    assert strip_gutenberg("Just one line.") == "Just one line."
    assert strip_gutenberg("") == ""


def test_pack_blocks_puts_eos_at_document_ends_and_drops_the_tail():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8]]
    blocks, stats = pack_blocks(docs, block_size=4, eos_token_id=0)
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6]]
    assert stats == {"tokens": 11, "blocks": 2, "dropped_tail_tokens": 3}
    blocks, stats = pack_blocks(docs, block_size=3, eos_token_id=0)
    assert blocks == [[1, 2, 3], [0, 4, 5], [0, 6, 7]]
    assert stats == {"tokens": 11, "blocks": 3, "dropped_tail_tokens": 2}
    stream = [t for block in pack_blocks(docs, 11, 0)[0] for t in block]
    assert [i for i, t in enumerate(stream) if t == 0] == [3, 6, 10]  # exactly after each document
    assert pack_blocks([], 4, 0) == ([], {"tokens": 0, "blocks": 0, "dropped_tail_tokens": 0})
    for bad in (1, 0, 2.5, True):
        with pytest.raises(PeftGpt2Error, match="block_size"):
            pack_blocks(docs, bad, 0)


def test_corpus_blocks_with_a_tokenizer():
    class CharTokenizer:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=True, verbose=True):
            assert not add_special_tokens
            return {"input_ids": [ord(c) for c in text]}

    blocks, stats = corpus_blocks([Document("a", "abc"), Document("b", "de")], CharTokenizer(), 3)
    assert blocks == [[97, 98, 99], [0, 100, 101]] and stats["dropped_tail_tokens"] == 1


def test_split_by_position_holds_out_the_end_of_each_document():
    paragraphs = [f"Paragraph {i:02d} " + "word " * 20 for i in range(20)]
    docs = [Document("a.txt", "\n\n".join(p.strip() for p in paragraphs)), Document("b.txt", "Short.\n\nEnd.")]
    train, validation = split_by_position(docs, validation_fraction=0.2)
    assert [d.name for d in train] == ["a.txt", "b.txt"] and [d.name for d in validation] == ["a.txt"]
    train_a, validation_a = train[0].text, validation[0].text
    assert train_a.split("\n\n") + validation_a.split("\n\n") == docs[0].text.split("\n\n")  # in order, no overlap
    assert docs[0].text.endswith(validation_a) and validation_a.startswith("Paragraph 16 ")  # 1st boundary >= 80%
    assert 0.15 <= len(validation_a) / len(docs[0].text) <= 0.2
    assert train[1] == docs[1]  # no paragraph boundary in its last 20%: nothing to hold out, kept whole
    train, validation = split_by_position(docs, 0)
    assert train == docs and validation == []
    one = [Document("one", "One paragraph only.")]
    assert split_by_position(one, 0.5) == (one, [])
    with pytest.raises(PeftGpt2Error, match="validation_fraction"):
        split_by_position(docs, 1.0)


def test_load_corpus_from_folder_and_file(tmp_path):
    (tmp_path / "b.txt").write_text(BOOK, encoding="utf-8")
    (tmp_path / "a.txt").write_text("First\nbook.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    docs = load_corpus(str(tmp_path))
    assert [d.name for d in docs] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert docs[0].text == "First book." and docs[1].text == EXPECTED
    assert load_corpus(str(tmp_path / "a.txt")) == [docs[0]]
    assert load_corpus([str(tmp_path / "a.txt"), str(tmp_path)]) == [docs[0], *docs]


def test_load_corpus_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(PeftGpt2Error, match="nope.txt does not exist"):
        load_corpus(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftGpt2Error, match=r"empty has no \.txt files"):
        load_corpus(str(tmp_path / "empty"))
    (tmp_path / "blank.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n\n*** END OF THE X ***\n")
    with pytest.raises(PeftGpt2Error, match="blank.txt: no text left"):
        load_corpus(str(tmp_path / "blank.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(PeftGpt2Error, match="latin1.txt: line 1: not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))
    with pytest.raises(PeftGpt2Error, match="no corpus given"):
        load_corpus([])
