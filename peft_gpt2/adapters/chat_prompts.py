"""OpenAI-shaped chat messages rendered into one prompt, in the format the answering adapter was trained with; the
one rendering the server's ``/v1/chat/completions`` and the ``chat`` CLI share.

    python -c "from peft_gpt2.adapters.adapter_set import AdapterSet; from peft_gpt2.models.loading import load_base; \
from peft_gpt2.adapters.chat_prompts import chat_prompt; m = AdapterSet(*load_base('tiny-gpt2')); \
print(chat_prompt(m, None, [{'role': 'user', 'content': 'Say hi.'}]))"

Which format (a model answers well only in the format it learned):

- an adapter trained on conversations (provenance ``data_format: messages``): the tokenizer's chat template, or
  ``GPT2_CHAT_TEMPLATE`` for a tokenizer without one (GPT-2), as ``conversations`` rendered it for training, with
  the generation prompt; generation ends on the token the template puts after an assistant turn (ChatML's
  ``<|im_end|>``, eos for ours), found by rendering a user/assistant pair, as training finds it;
- an adapter trained on instructions (``instructions``, ``data_to_text``, or unrecorded): its instruction template,
  each user turn an Instruction section and each assistant turn its Response, so one user message renders exactly
  ``template.prompt(content)``, as in training; system messages replace the template's preamble (the text before
  its first ``### ``); generation ends at the template's stop strings (the next section);
- the bare base, or a plain-LM (``text``) adapter: the tokenizer's own chat template if it has one (SmolLM2's
  ChatML) and no template was named for the set, else the instruction rendering with ``template_for(None)``.

The tokenizer is never changed: ``GPT2_CHAT_TEMPLATE`` is passed per call, so rendering for a chat adapter does not
give the base a chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.data.conversations import GPT2_CHAT_TEMPLATE, end_of_turn_ids
from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.data.templates import Template

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # OpenAI's -> ours
SECTION = "### "  # where an instruction template's first section starts: the text before it is the preamble


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered for generation.

    Args:
        text (`str`): the prompt, ending exactly where the assistant's answer begins.
        stop (`list[str]`): stop strings (an instruction template's section marker, ``"### "``); ``[]`` for a
            chat template, whose turns end on a special token instead.
        stop_token_ids (`list[int]`): end-of-turn special tokens (ChatML's ``<|im_end|>``; ours: eos); ``[]`` for
            an instruction template.
        source (`str`): what rendered it, for logs, e.g. ``"tokenizer chat template"`` or ``"alpaca template"``.
    """

    text: str
    stop: list[str]
    stop_token_ids: list[int]
    source: str


def check_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat ``messages`` checked and normalised to ``{"role", "content"}`` dicts.

    Roles are system, user, assistant (``developer`` counts as system, as in OpenAI's API); content is a non-empty
    string or a list of ``{"type": "text", "text": ...}`` parts, joined by newlines (images and other parts are
    refused). Content is stripped, as training strips it. The last message must be the user's: the answer follows
    it. Errors name the field (``messages[2].content``) so a server can return them as a 400.
    """
    if not isinstance(messages, list) or not messages:
        raise PeftGpt2Error("messages must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise PeftGpt2Error(f"{where} must be an object with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise PeftGpt2Error(f"{where}.role: unsupported role {role!r:.40}; expected one of {', '.join(ROLES)}")
        out.append({"role": ROLES[role], "content": _content(message.get("content"), f"{where}.content")})
    if out[-1]["role"] != "user":
        raise PeftGpt2Error(
            f"messages[{len(out) - 1}].role: the last message must be the user's (the answer follows it), got "
            f"{messages[-1]['role']!r}"
        )
    return out


def _content(content: object, where: str) -> str:
    """One message's text: a string, or text parts joined by newlines; checked non-empty and valid Unicode."""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                got = f"type {kind!r:.40}" if isinstance(part, dict) else f"a {type(part).__name__}"
                raise PeftGpt2Error(
                    f"{where}[{j}]: only text parts ({{'type': 'text', 'text': ...}}) are supported, got {got}; "
                    "images and other inputs are not"
                )
            if not isinstance(part.get("text"), str):
                raise PeftGpt2Error(f"{where}[{j}].text must be a string, got {type(part.get('text')).__name__}")
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str) or not content.strip():
        got = "empty" if isinstance(content, str) else f"a {type(content).__name__}"
        raise PeftGpt2Error(f"{where} must be a non-empty string or a list of text parts, got {got}")
    at = next((k for k, c in enumerate(content) if "\ud800" <= c <= "\udfff"), None)
    if at is not None:  # JSON's "\ud800", which Python's parser accepts and no tokenizer takes
        raise PeftGpt2Error(f"{where}: not text: a lone surrogate {content[at]!r} at character {at}")
    return content.strip()


def chat_prompt(adapter_set: AdapterSet, adapter: str | None, messages: list[dict]) -> ChatPrompt:
    """``messages`` (checked by `check_messages`) rendered for ``adapter`` (``None``: the bare base) of
    ``adapter_set``, in the format that adapter was trained with (see the module docstring).

    Returns:
        `ChatPrompt`: the prompt, and the stop strings and end-of-turn token ids to generate it with.
    """
    messages = check_messages(messages)
    if adapter is not None and adapter not in adapter_set.info:
        raise PeftGpt2Error(f"no adapter named {adapter!r}; loaded: {', '.join(adapter_set.names) or 'none'}")
    tokenizer = adapter_set.tokenizer
    data_format = _data_format(adapter_set, adapter)
    if data_format == "messages":
        if tokenizer.chat_template:
            return _chat_template(tokenizer, tokenizer.chat_template, messages, "tokenizer chat template")
        return _chat_template(tokenizer, GPT2_CHAT_TEMPLATE, messages, "GPT-2 chat template (GPT2_CHAT_TEMPLATE)")
    if data_format == "text" or adapter is None:
        if tokenizer.chat_template and adapter_set.template is None:
            return _chat_template(tokenizer, tokenizer.chat_template, messages, "tokenizer chat template")
        return instruction_prompt(adapter_set.template_for(None), messages)
    return instruction_prompt(adapter_set.template_for(adapter), messages)


def _data_format(adapter_set: AdapterSet, adapter: str | None) -> str | None:
    """The data format ``adapter`` was trained on (``None``: the base, or unrecorded); a ``combine`` result takes
    its parts' format when they all share one."""
    if adapter is None:
        return None
    info = adapter_set.info
    provenance = info[adapter].provenance
    if provenance.combined_from and provenance.data_format is None:
        formats = {info[n].provenance.data_format if n in info else None for n in provenance.combined_from}
        return formats.pop() if len(formats) == 1 else None
    return provenance.data_format


def instruction_prompt(template: Template, messages: list[dict]) -> ChatPrompt:
    """``messages`` (checked by `check_messages`) as instruction ``template`` sections: each user turn an
    Instruction, each assistant turn the Response under it, system text in place of the template's preamble.

    Consecutive user (or assistant) turns are joined by a blank line into one section; an assistant turn before
    any user turn answers an empty instruction.
    """
    messages = check_messages(messages)
    whole = template.without_input
    preamble = whole[: max(whole.find(SECTION), 0)]
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns: list[list[str]] = []  # [instruction, response], the last one unanswered
    for m in messages:
        if m["role"] == "user" and (not turns or turns[-1][1]):
            turns.append([m["content"], ""])
        elif m["role"] == "user":
            turns[-1][0] += "\n\n" + m["content"]
        elif m["role"] == "assistant":
            if not turns:
                turns.append(["", ""])
            turns[-1][1] += ("\n\n" if turns[-1][1] else "") + m["content"]
    sections = [template.prompt(instruction)[len(preamble) :] for instruction, _ in turns]
    text = "\n\n".join(system) + "\n\n" if system else preamble
    text += "".join(f"{section}{answer}\n\n" for section, (_, answer) in zip(sections[:-1], turns[:-1], strict=True))
    return ChatPrompt(text + sections[-1], list(template.stop), [], f"{template.name} template")


def _chat_template(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict], source: str) -> ChatPrompt:
    """Checked ``messages`` through the Jinja chat ``template`` with its generation prompt, and its end-of-turn
    token."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError as err:  # a template's raise_exception() ("roles must alternate"): its own words
        raise PeftGpt2Error(f"messages: the {source} refused them: {err}") from None
    return ChatPrompt(text, [], end_of_turn_ids(tokenizer, template), source)


def fit_history(
    adapter_set: AdapterSet, adapter: str | None, messages: list[dict], max_new_tokens: int
) -> tuple[ChatPrompt, list[dict], int]:
    """``messages`` rendered by `chat_prompt`, their oldest exchanges (a user turn and the answers to it) dropped
    until the prompt and ``max_new_tokens`` fit the model's positions; system messages are always kept.

    Returns:
        `tuple[ChatPrompt, list[dict], int]`: the prompt, the messages kept (checked), and how many exchanges were
        dropped. The last user turn is never dropped: if it alone does not fit, generation says so.
    """
    from peft_gpt2.models.loading import max_positions

    messages, dropped = check_messages(messages), 0
    limit = max_positions(adapter_set.model.config)
    while True:
        prompt = chat_prompt(adapter_set, adapter, messages)
        if not limit or len(adapter_set.tokenizer(prompt.text)["input_ids"]) + max_new_tokens <= limit:
            return prompt, messages, dropped
        roles = [(i, m["role"]) for i, m in enumerate(messages) if m["role"] != "system"]
        before = [None] + [role for _, role in roles[:-1]]
        starts = [i for (i, role), prev in zip(roles, before, strict=True) if role == "user" and prev != "user"]
        if len(starts) < 2:
            return prompt, messages, dropped
        messages = [m for i, m in enumerate(messages) if m["role"] == "system" or i >= starts[1]]
        dropped += 1
