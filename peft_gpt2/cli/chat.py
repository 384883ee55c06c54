"""Chat in the terminal with a base model and its adapters, switching between them without reloading.

    peft-gpt2 chat --adapter alpaca=adapters/alpaca-lora --adapter sherlock=adapters/sherlock-lm

The conversation is remembered: every turn sends the whole history (and a ``/system`` message), rendered by
``chat_prompts.chat_prompt`` in the format the answering adapter was trained with (the chat template for an
adapter trained on conversations, instruction sections for one trained on instructions), as the server's
``/v1/chat/completions`` renders it. The history survives ``/adapter`` switches; ``/reset`` forgets it. When it
outgrows the model's positions, the oldest exchanges are dropped, and the chat says how many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.chat_prompts import fit_history
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.settings import GenerationSettings

HELP = """\
Type a message and press Enter; the conversation so far goes with it. Commands:
  /adapter NAME   answer with adapter NAME (the conversation is kept)
  /base           answer with the bare base model (adapters off; the conversation is kept)
  /adapters       list the loaded adapters (* marks the active one)
  /system TEXT    set the system message (/system alone removes it)
  /reset          forget the conversation (the system message stays)
  /help           this text
  /quit           leave (Ctrl-D too)"""


def _listing(adapter_set: AdapterSet) -> str:
    names = [("* " if n == adapter_set.active else "  ") + n for n in adapter_set.names]
    base = ("* " if adapter_set.active is None else "  ") + "(base)"
    return "\n".join([*names, base])


def answer_turn(
    adapter_set: AdapterSet, history: list[dict], text: str, settings: GenerationSettings, print_fn: Callable
) -> list[dict]:
    """Answer ``text`` after ``history`` with the active adapter, print the answer; the history to keep.

    The history comes back with the exchange added (an empty answer adds nothing) and, when it did not fit the
    model with ``settings.max_new_tokens``, without its oldest exchanges, said in one printed line.
    """
    messages = [*history, {"role": "user", "content": text}]
    prompt, messages, dropped = fit_history(adapter_set, adapter_set.active, messages, settings.max_new_tokens)
    if dropped:
        print_fn(
            f"(the conversation outgrew the model's positions: dropped the {dropped} oldest "
            f"turn{'s' if dropped > 1 else ''}; /reset starts afresh)"
        )
    decoding = replace(settings, stop=prompt.stop, stop_token_ids=prompt.stop_token_ids)
    answer = adapter_set.generate([prompt.text], settings=decoding, raw=True)[0].text
    print_fn(answer or "(empty answer)")
    return [*messages, {"role": "assistant", "content": answer}] if answer else messages[:-1]


def _system(history: list[dict], text: str) -> list[dict]:
    """``history`` with its system message set to ``text`` (removed when ``text`` is empty)."""
    turns = [m for m in history if m["role"] != "system"]
    return [{"role": "system", "content": text}, *turns] if text else turns


def run_chat(
    adapter_set: AdapterSet,
    *,
    settings: GenerationSettings | None = None,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., None] = print,
) -> int:
    """Read messages and commands until ``/quit`` or end of input; print each answer.

    Args:
        adapter_set (`AdapterSet`): the base and its adapters; ``/adapter`` and ``/base`` call its ``use``.
        settings (`GenerationSettings`, *optional*): decoding; greedy by default (stop strings and end-of-turn
            tokens come from each turn's rendering).
        input_fn (`Callable[[str], str]`, defaults to `input`): reads one line, given the prompt; raises
            ``EOFError`` at the end of input (scripted in tests).
        print_fn (`Callable`, defaults to `print`): writes one message.

    Returns:
        `int`: the number of answers given.
    """
    settings = settings or GenerationSettings()
    answers, history = 0, []
    print_fn(HELP)
    while True:
        try:
            line = input_fn(f"[{adapter_set.active or 'base'}]> ").strip()
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            return answers
        if not line:
            continue
        if not line.startswith("/"):
            try:
                history = answer_turn(adapter_set, history, line, settings, print_fn)
                answers += 1
            except KeyboardInterrupt:  # Ctrl-C stops a long answer, not the chat
                print_fn("(interrupted)")
            except PeftGpt2Error as err:  # e.g. a message too long for the model
                print_fn(f"error: {err}")
            continue
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if command in ("quit", "exit", "q"):
            return answers
        if command == "reset":
            history = _system([], next((m["content"] for m in history if m["role"] == "system"), ""))
            print_fn("conversation forgotten (the system message stays)")
        elif command == "system":
            history = _system(history, arg)
            print_fn("system message set" if arg else "system message removed")
        else:
            _switch_or_list(adapter_set, command, arg, print_fn)


def _switch_or_list(adapter_set: AdapterSet, command: str, arg: str, print_fn: Callable) -> None:
    """The commands that do not touch the conversation: /help, /adapters, /base, /adapter NAME."""
    if command == "help":
        print_fn(HELP)
    elif command == "adapters":
        print_fn(_listing(adapter_set))
    elif command == "base":
        adapter_set.use(None)
        print_fn("now answering with the base model (adapters off)")
    elif command == "adapter" and arg:
        try:
            adapter_set.use(arg)
            print_fn(f"now answering with adapter {arg}")
        except PeftGpt2Error as err:
            print_fn(str(err))
    elif command == "adapter":
        print_fn("usage: /adapter NAME\n" + _listing(adapter_set))
    else:
        print_fn(f"unknown command /{command}; /help lists them")


def chat_main(
    model: str | None,
    adapters: dict[str, str | Path],
    settings: GenerationSettings | None = None,
    template: str | None = None,
    *,
    force: bool = False,
    allow_pickle: bool = False,
) -> int:
    """Load the base and adapters once, then chat; the CLI's ``chat`` command.

    Args:
        model (`str`, *optional*): the base (hub id, folder, ``.gguf``, preset); default: the first adapter's base.
        adapters (`dict[str, str | Path]`): ``{name: adapter folder}``; the first is active at the start.
        settings (`GenerationSettings`, *optional*): decoding; greedy by default.
        template (`str`, *optional*): prompt template name; default: each adapter's recorded template.
        force (`bool`, defaults to `False`): skip the base-model fingerprint check.
        allow_pickle (`bool`, defaults to `False`): accept ``adapter_model.bin`` weights.

    Returns:
        `int`: the exit status, 0.
    """
    adapter_set = AdapterSet.from_paths(model, adapters, template=template, force=force, allow_pickle=allow_pickle)
    run_chat(adapter_set, settings=settings)
    return 0
