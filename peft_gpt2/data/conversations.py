"""Chat data (``data.format: messages``): conversations rendered with the tokenizer's chat template, loss on the
assistant turns only.

    python -c "from peft_gpt2.data.conversations import load_conversations; \
print(len(load_conversations('data/sample_conversations.json')[0]))"

A record is OpenAI-shaped, ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``, or
ShareGPT-shaped, ``{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}]}``, in a JSON list or
JSONL file (the two may be mixed). Every assistant turn is trained on: its content and the end-of-turn token that
the template puts after it (so answers learn to stop); system and user turns and the template's scaffolding (role
headers, a default system prompt, the newline after an end-of-turn) carry no loss. A tokenizer without a chat
template (GPT-2) gets ``GPT2_CHAT_TEMPLATE``, saved with the run's tokenizer so chat and serving render the same.

Checked before any model loads, each error naming the file, record and field: a record without ``messages`` /
``conversations``, an unknown role, an empty or non-string content, a lone surrogate, no assistant turn, a first
turn (after an optional system turn) that is not the user's. Turns after the last assistant turn are dropped and
counted (``trailing_turns_dropped``): they carry no loss and, coming last, change no trained token's context, so
the cut loses nothing; scraped ShareGPT dumps often end on an unanswered user turn. Content is stripped of leading
and trailing whitespace, as instruction outputs are. Exact duplicates are dropped and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_gpt2.data.instructions import split, subsample
from peft_gpt2.data.rows import TrainingRows
from peft_gpt2.data.sources import read_source
from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.data.config import DataConfig

# For tokenizers without one (GPT-2): "### User:\n<text><eos>\n" per turn, the "### " sections our instruction
# templates use. The eos after every turn is the end-of-turn an assistant turn learns, so generation stops there.
GPT2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + (message['role'] | capitalize) + ':\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)
SHAPES = {  # record key -> (turn's role key, turn's text key, role names -> OpenAI roles)
    "messages": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "conversations": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}


def validate_conversations(raw: list, source: str) -> tuple[list[dict], int]:
    """``{"record": index, "messages": turns}`` per record, turns as OpenAI ``{"role", "content"}`` dicts, and how
    many trailing turns were dropped."""
    conversations, trailing = [], 0
    for i, record in enumerate(raw):
        turns = _turns(record, f"{source}: record {i}")
        last = max((t for t, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            key = next(k for k in SHAPES if k in record)
            raise PeftGpt2Error(f"{source}: record {i}: field {key!r} has no assistant turn: nothing to learn")
        trailing += len(turns) - last - 1
        conversations.append({"record": i, "messages": turns[: last + 1]})
    return conversations, trailing


def _turns(record: object, where: str) -> list[dict]:
    """One record's turns, checked: the shape, every role and content, and who speaks first."""
    keys = [k for k in SHAPES if isinstance(record, dict) and k in record]
    if len(keys) != 1:
        got = f"keys {sorted(record)[:8]}" if isinstance(record, dict) else f"a {type(record).__name__}"
        alpaca = isinstance(record, dict) and "instruction" in record
        raise PeftGpt2Error(
            f"{where}: expected exactly one of 'messages' (OpenAI) or 'conversations' (ShareGPT), got {got}"
            + ("; an Alpaca record: use data.format: instructions" if alpaca else "")
        )
    key = keys[0]
    role_key, text_key, roles = SHAPES[key]
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise PeftGpt2Error(f"{where}: field {key!r} must be a non-empty list of turns")
    out = []
    for t, turn in enumerate(turns):
        field = f"{key}[{t}]"
        if not isinstance(turn, dict):
            raise PeftGpt2Error(f"{where}: field {field} must be an object, got {type(turn).__name__}")
        role, text = turn.get(role_key), turn.get(text_key)
        if role not in roles:
            raise PeftGpt2Error(f"{where}: field {field}.{role_key}: unknown role {role!r}; expected one of {[*roles]}")
        if not isinstance(text, str) or not text.strip():
            got = "empty" if isinstance(text, str) else f"a {type(text).__name__}"
            raise PeftGpt2Error(f"{where}: field {field}.{text_key} must be a non-empty string, got {got}")
        try:  # a lone surrogate ("\\ud800" in JSON) fails later, when the test split is written out
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise PeftGpt2Error(
                f"{where}: field {field}.{text_key} holds text that is not valid Unicode ({err.reason} at character "
                f"{err.start}); fix or drop the record"
            ) from None
        out.append({"role": roles[role], "content": text.strip()})
    first = 1 if out[0]["role"] == "system" else 0
    if first < len(out) and out[first]["role"] != "user":
        raise PeftGpt2Error(f"{where}: field {key}[{first}]: a conversation opens with a user turn (after an "
                            f"optional system turn), got {out[first]['role']!r}")
    return out


def load_conversations(source: str) -> tuple[list[dict], int]:
    """Read and validate conversations from a JSON/JSONL file, a URL or a hub data set name."""
    raw = read_source(source)
    if not raw:
        raise PeftGpt2Error(f"{source}: no conversations")
    return validate_conversations(raw, source)


def dedupe(conversations: list[dict]) -> tuple[list[dict], int]:
    """Exact duplicates dropped (first kept), and their count."""
    seen: set[tuple] = set()
    kept = []
    for conversation in conversations:
        key = tuple((m["role"], m["content"]) for m in conversation["messages"])
        if key not in seen:
            seen.add(key)
            kept.append(conversation)
    return kept, len(conversations) - len(kept)


def with_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer, given ``GPT2_CHAT_TEMPLATE`` if it has no chat template of its own (set in place, so the
    run's saved tokenizer carries the template it was trained with)."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = GPT2_CHAT_TEMPLATE
    return tokenizer


def render_segments(turns: list[dict], tokenizer: PreTrainedTokenizerBase, where: str) -> list[tuple[str, int]]:
    """The rendered conversation cut into ``(text, trained)`` pieces: scaffolding and user/system turns (0), each
    assistant content and its end-of-turn token (1).

    Found from the template itself: the conversation up to each assistant turn, rendered with the generation
    prompt, must be where that turn's content starts in the full rendering, and the content must be followed by a
    special token (the end-of-turn). Pieces are tokenized separately, so no BPE merge crosses a boundary and the
    mask is exact, as at inference, where the prompt is tokenized and the answer generated after it.
    """
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    pieces, pos = [], 0
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(turns[:k], tokenize=False, add_generation_prompt=True)
        end = len(prefix) + len(turn["content"])
        if not (full.startswith(prefix) and full[len(prefix) : end] == turn["content"] and len(prefix) >= pos):
            raise PeftGpt2Error(
                f"{where}[{k}]: the chat template does not render this assistant turn after the generation "
                "prompt of the turns before it, so its loss mask cannot be found; use a template that does"
            )
        eot = next((s for s in specials if full.startswith(s, end)), None)
        if eot is None:
            raise PeftGpt2Error(
                f"{where}[{k}]: the chat template puts no special token after an assistant turn "
                f"({full[end : end + 20]!r}), so answers could not learn to stop; use a template that ends turns "
                "with one"
            )
        pieces += [(full[pos : len(prefix)], 0), (turn["content"] + eot, 1)]
        pos = end + len(eot)
    return [*pieces, (full[pos:], 0)]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, template: str) -> list[int]:
    """The special token ``template`` puts right after an assistant turn's content (ChatML: ``<|im_end|>``; ours:
    eos), found as ``render_segments`` finds it; the chat
    command, the server and chat evaluation all stop there; ``[]`` if it puts none there."""
    from jinja2 import TemplateError

    pair = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
    try:
        full = tokenizer.apply_chat_template(pair, chat_template=template, tokenize=False)
        prefix = tokenizer.apply_chat_template(
            pair[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError:  # a template that wants a system turn, say: then stop strings and eos must do
        return []
    end = len(prefix) + len(pair[1]["content"])
    if not full.startswith(prefix + pair[1]["content"]):
        return []
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    token = next((s for s in specials if full.startswith(s, end)), None)
    return [] if token is None else [tokenizer.convert_tokens_to_ids(token)]


def tokenize_conversations(
    conversations: list[dict], tokenizer: PreTrainedTokenizerBase, source: str, *, last_turn_only: bool = False
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, assistant_masks)`` per conversation: 1 on assistant content and end-of-turn tokens only (with
    ``last_turn_only``, on the last assistant turn's: what evaluation scores, given every turn before it)."""
    rendered = [
        render_segments(c["messages"], tokenizer, f"{source}: record {c['record']}: field messages")
        for c in conversations
    ]
    texts = [text for pieces in rendered for text, _ in pieces]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    out = []
    for pieces in rendered:
        row, mask = [], []
        last = max((k for k, (_, trained) in enumerate(pieces) if trained), default=-1)
        for k, (_, trained) in enumerate(pieces):
            piece = next(ids)
            row += piece
            mask += [int(trained and (k == last or not last_turn_only))] * len(piece)
        out.append((row, mask))
    return out


def fit_rows(tokenized: list[tuple[list[int], list[int]]], max_length: int, overlong: str) -> tuple[list, int, int]:
    """``data.overlong`` applied: a conversation over ``max_length`` tokens is cut (its start kept) or dropped;
    one whose first assistant token falls past the cut is dropped either way (it would carry no loss)."""
    rows, truncated, dropped = [], 0, 0
    for ids, mask in tokenized:
        if len(ids) > max_length:
            if overlong == "drop" or 1 not in mask[:max_length]:
                dropped += 1
                continue
            truncated += 1
        rows.append({"input_ids": ids[:max_length], "assistant_masks": mask[:max_length]})
    return rows, truncated, dropped


def conversation_rows(d: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingRows:
    """Load, check, dedupe, subsample and split ``data.path``; tokenize train and validation with their masks.

    Rows are ``{"input_ids", "assistant_masks"}``: TRL's own pre-tokenized conversational shape, from which its
    ``SFTTrainer`` builds the labels (-100 where the mask is 0). The test conversations stay as records
    (``{"messages": [...]}``, OpenAI shape), saved with the run.
    """
    conversations, trailing = load_conversations(d.path)
    kept, duplicates = dedupe(conversations)
    kept = subsample(kept, limit=d.limit, fraction=d.fraction, seed=d.seed)
    train, validation, test = split(kept, list(d.split), d.seed)
    if not train:
        raise PeftGpt2Error(f"{d.path}: {len(kept)} conversations leave no training examples after the split")
    stats = {
        "records_read": len(conversations),
        "dropped_duplicates": duplicates,
        "trailing_turns_dropped": trailing,
        "records_used": len(kept),
        "train": len(train),
        "validation": len(validation),
        "test": len(test),
    }
    with_chat_template(tokenizer)
    rows = {}
    for name, part in (("train", train), ("validation", validation)):
        tokenized = tokenize_conversations(part, tokenizer, d.path)
        rows[name], truncated, dropped = fit_rows(tokenized, d.max_length, d.overlong)
        stats.update({f"{name}_overlong_truncated": truncated, f"{name}_overlong_dropped": dropped})
    if not rows["train"]:
        raise PeftGpt2Error(f"{d.path}: every training conversation is longer than data.max_length={d.max_length}")
    return TrainingRows(rows["train"], rows["validation"], [{"messages": c["messages"]} for c in test], stats)
