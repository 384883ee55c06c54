"""Chat in the terminal with a base model and its adapters, switching between them without reloading.

    peft-gpt2 chat --adapter alpaca=adapters/alpaca-lora --adapter sherlock=adapters/sherlock-lm

Each line typed is one instruction, rendered through the prompt template the model was trained with;
there is no conversation memory, because the templates hold one instruction and one response.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peft_gpt2.adapter_set import AdapterSet
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.generation import GenerationSettings

HELP = """\
Type an instruction and press Enter. Commands:
  /adapter NAME   answer with adapter NAME
  /base           answer with the bare base model (adapters off)
  /adapters       list the loaded adapters (* marks the active one)
  /help           this text
  /quit           leave (Ctrl-D too)"""


def _listing(adapter_set: AdapterSet) -> str:
    names = [("* " if n == adapter_set.active else "  ") + n for n in adapter_set.names]
    base = ("* " if adapter_set.active is None else "  ") + "(base)"
    return "\n".join([*names, base])


def run_chat(
    adapter_set: AdapterSet,
    *,
    settings: GenerationSettings | None = None,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., None] = print,
) -> int:
    """Read instructions and commands until ``/quit`` or end of input; print each answer.

    Args:
        adapter_set (`AdapterSet`): the base and its adapters; ``/adapter`` and ``/base`` call its ``use``.
        settings (`GenerationSettings`, *optional*): decoding; greedy by default.
        input_fn (`Callable[[str], str]`, defaults to `input`): reads one line, given the prompt; raises
            ``EOFError`` at the end of input (scripted in tests).
        print_fn (`Callable`, defaults to `print`): writes one message.

    Returns:
        `int`: the number of answers given.
    """
    answers = 0
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
                print_fn(adapter_set.generate([line], settings=settings)[0].text or "(empty answer)")
                answers += 1
            except KeyboardInterrupt:  # Ctrl-C stops a long answer, not the chat
                print_fn("(interrupted)")
            except PeftGpt2Error as err:  # e.g. an instruction too long for the model
                print_fn(f"error: {err}")
            continue
        command, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if command in ("quit", "exit", "q"):
            return answers
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
