"""Publish a finished run folder to the Hugging Face Hub: ``create_repo`` + ``upload_folder``, then its model card.

    peft-gpt2 push adapters/quickstart --repo-id USER/quickstart-lora --private

Only a folder ``peft-gpt2 train`` (or ``merge``) finished goes: its provenance record is checked before any network
call. Pickles, checkpoints, hidden files and the held-out test records stay home (``PUSH_IGNORE``). The card is
written again with the repo id, so its loading snippet names the repo instead of a local folder.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.run_folder import ADAPTER_CONFIG, MODEL_CONFIG, PROVENANCE, TEST_SPLIT, Provenance, kind_of
from peft_gpt2.training.model_card import MODEL_CARD, model_card

# upload_folder's ignore_patterns (fnmatch on the path inside the folder; ``*`` crosses ``/``).
PUSH_IGNORE = [
    ".*",  # hidden files and folders: staging leftovers, .write-check probes
    "*/.*",
    "checkpoint-*",  # Trainer checkpoints (optimizer state: several times the adapter's size)
    "*/checkpoint-*",
    "*.bin",  # pickles (training_args.bin, optimizer/scheduler/rng state); our weights are safetensors
    "*.pt",
    "*.pth",
    "*.pkl",
    TEST_SPLIT,  # the user's held-out records are data, not model: published only on purpose
    MODEL_CARD,  # uploaded after the files, rewritten for the repo
]


def finished_run(folder: str | Path) -> Provenance:
    """The folder's provenance, or an error saying why it is not a finished peft-gpt2 run folder."""
    path = Path(folder)
    if not path.is_dir():
        raise PeftGpt2Error(f"{path} is not a folder; push the folder peft-gpt2 train wrote (<output_dir>/<name>)")
    if not (path / PROVENANCE).is_file():
        raise PeftGpt2Error(f"{path} is not a finished peft-gpt2 run: no {PROVENANCE} (written when a run is saved)")
    if kind_of(path) is None:
        raise PeftGpt2Error(f"{path} has {PROVENANCE} but neither {ADAPTER_CONFIG} nor {MODEL_CONFIG}")
    return Provenance.read(path)


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a run folder to ``repo_id`` (created if missing, on branch ``revision`` if given); its URL.

    Args:
        folder (`str` or `Path`): a run folder (``<output_dir>/<name>``).
        repo_id (`str`): ``USER/NAME`` or ``ORG/NAME`` on the Hub.
        private (`bool`, *optional*, defaults to `False`): create the repo private (an existing repo keeps its
            visibility).
        revision (`str`, *optional*): a branch to push to, created from ``main`` if missing.
        endpoint (`str`, *optional*): the Hub's URL (default: ``HF_ENDPOINT`` or huggingface.co).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    provenance = finished_run(folder)  # before any network call
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PeftGpt2Error(f"--repo-id {repo_id!r}: {str(err).splitlines()[0]}") from None
    if constants.HF_HUB_OFFLINE:
        raise PeftGpt2Error("cannot push: HF_HUB_OFFLINE is set (offline mode); unset it where there is network")
    api = HfApi(endpoint=endpoint)
    card = model_card(provenance, repo_id, pushed=True).encode("utf-8")
    with hub_errors(api.endpoint, repo_id):
        url = api.create_repo(repo_id, private=private or None, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            ignore_patterns=PUSH_IGNORE,
            commit_message=f"peft-gpt2 run {provenance.name or Path(folder).name}",
        )
        api.upload_file(
            path_or_fileobj=card, path_in_repo=MODEL_CARD, repo_id=repo_id, revision=revision, commit_message="card"
        )
    return str(url)


@contextmanager
def hub_errors(endpoint: str, repo_id: str):
    """Turn the Hub client's failures into one line: offline, unreachable, not logged in, refused."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise PeftGpt2Error("cannot push: HF_HUB_OFFLINE is set (offline mode)") from None
    except (httpx2.TransportError, ConnectionError) as err:
        raise PeftGpt2Error(f"cannot reach the Hub at {endpoint}: {_first_line(err)}; are you online?") from None
    except LocalTokenNotFoundError:
        raise PeftGpt2Error("not logged in to the Hub: run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = "; run `hf auth login` with a token that can write" if status in (401, 403) else ""
        raise PeftGpt2Error(f"the Hub refused the push to {repo_id}: {_first_line(err)}{hint}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def add_push_command(commands) -> None:
    """``peft-gpt2 push RUN --repo-id USER/NAME [--private] [--revision BRANCH]``."""
    p = commands.add_parser("push", help="upload a finished run folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="RUN", help="run folder, e.g. adapters/quickstart")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created from main if missing)")
    p.set_defaults(run=_push)


def _push(args: argparse.Namespace) -> None:
    url = push(args.folder, args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed {args.folder} to {url}")
