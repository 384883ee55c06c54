"""The system refusing a file (no permission, disk full, a file where a folder should be) is one line, not a
traceback; an output that cannot be written fails before the data and model load; a failed save damages nothing.

The tests run as root, so permissions cannot be taken away: the failures are simulated where the system call is.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import TOY_DATA, write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.run_folder import publish_folder


def one_line_error(capsys) -> str:
    """The error line (the last of stderr: the training bar may come before it)."""
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("peft-gpt2: error: ") and "Traceback" not in err, err
    return line


@pytest.fixture()
def toy(tmp_path) -> Path:
    """A 2-step LoRA recipe of the tiny GPT-2 on 16 records, its output in ``adapters/`` beside it."""
    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"][:16]))
    return write_recipe(tmp_path / "toy.yaml", train={"max_steps": 2})


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Fail the test if the data or the model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded the data or the model before checking the output folder")

    monkeypatch.setattr("peft_gpt2.training.train.training_rows", refuse)
    monkeypatch.setattr("peft_gpt2.training.train.load_model", refuse)


@pytest.mark.parametrize("output_dir", ["taken", "taken/sub"])
def test_an_output_under_a_file_fails_before_loading(tmp_path, toy, capsys, nothing_loads, output_dir):
    """Before: a NotADirectoryError traceback from the Trainer, after the data and the model had loaded."""
    (tmp_path / "taken").write_text("a file")
    assert main(["train", str(toy), "--set", f"output_dir={tmp_path / output_dir}"]) == 2
    assert one_line_error(capsys).endswith(f"{tmp_path / 'taken'} is a file, not a folder; choose another output_dir")


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (
            "pathlib.Path.mkdir",
            PermissionError(errno.EACCES, "Permission denied", "/x/adapters"),
            "cannot create the folder /x/adapters: Permission denied",
        ),
        ("tempfile.mkstemp", OSError(errno.EROFS, "Read-only file system"), "adapters: Read-only file system"),
        ("tempfile.mkstemp", OSError(errno.ENOSPC, "No space left on device"), "adapters: No space left on device"),
    ],
)
def test_an_output_the_system_refuses_fails_before_loading(
    toy, capsys, nothing_loads, monkeypatch, target, error, message
):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(target, refuse)
    assert main(["train", str(toy)]) == 2
    assert one_line_error(capsys).endswith(message)


def test_disk_full_while_saving_keeps_the_earlier_run(tmp_path, toy, capsys, monkeypatch):
    """ENOSPC on the last file of the new folder: one line naming it; the folder it was to replace is untouched."""
    assert main(["train", str(toy)]) == 0
    out = tmp_path / "adapters" / "toy"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "peft_gpt2.json"))

    monkeypatch.setattr("peft_gpt2.run_folder.Provenance.write", disk_full)
    capsys.readouterr()
    assert main(["train", str(toy), "--overwrite"]) == 2
    assert one_line_error(capsys).endswith("peft_gpt2.json: No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in (tmp_path / "adapters").iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_a_failed_rename_puts_the_earlier_folder_back(tmp_path, monkeypatch):
    """Replacing sets the old folder aside first; if the new one then cannot take its name, the old one returns."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "weights").write_text("first")
    (tmp_path / "new").mkdir()
    real = Path.rename

    def rename(self, target):
        if self.name == "new":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        publish_folder(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out" / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_unreadable_inputs_are_one_line(tmp_path, toy, capsys, monkeypatch):
    """A folder given as the recipe or the data, a recipe the system will not let us read: the file and the reason."""
    (tmp_path / "folder.yaml").mkdir()
    assert main(["train", str(tmp_path / "folder.yaml")]) == 2
    assert one_line_error(capsys) == f"peft-gpt2: error: {tmp_path / 'folder.yaml'}: Is a directory"

    (tmp_path / "data.json").unlink()
    (tmp_path / "data.json").mkdir()
    assert main(["train", str(toy)]) == 2
    assert one_line_error(capsys) == f"peft-gpt2: error: {tmp_path / 'data.json'}: Is a directory"

    real = Path.read_bytes

    def no_permission(self):
        if self.name == "toy.yaml":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", no_permission)
    assert main(["train", str(toy)]) == 2
    assert one_line_error(capsys) == f"peft-gpt2: error: {toy}: Permission denied"


def test_an_unreadable_adapter_record_is_one_line(tmp_path, capsys):
    """``eval --adapter`` reads the run's peft_gpt2.json first; a folder in its place was an IsADirectoryError."""
    (tmp_path / "run" / "peft_gpt2.json").mkdir(parents=True)
    (tmp_path / "qa.json").write_text(json.dumps([{"question": "Who?", "answer": "Holmes"}]))
    assert main(["eval", "--adapter", str(tmp_path / "run"), "--data", str(tmp_path / "qa.json")]) == 2
    assert one_line_error(capsys) == f"peft-gpt2: error: {tmp_path / 'run' / 'peft_gpt2.json'}: Is a directory"


def test_a_bug_is_still_a_traceback(monkeypatch, tmp_path):
    """Only the system's refusals become messages: any other exception is a bug and must show where it is."""

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr("peft_gpt2.cli.commands.train", bug)
    with pytest.raises(KeyError):
        main(["train", str(tmp_path / "r.yaml")])


def test_check_writable_names_the_blocking_file(tmp_path):
    from peft_gpt2.run_folder import check_writable

    (tmp_path / "f").write_text("")
    with pytest.raises(PeftGpt2Error, match=r"f is a file, not a folder"):
        check_writable(tmp_path / "f" / "a" / "b")
    check_writable(tmp_path / "new" / "deep")
    assert list((tmp_path / "new" / "deep").iterdir()) == []  # the probe file is gone
