"""AdapterSet: one base in memory, many adapters, no leakage between them, merges that load anywhere."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from conftest import train_toy_adapter

from peft_gpt2.adapters import adapter_set as adapter_set_module
from peft_gpt2.adapters.adapter_set import AdapterSet, check_name
from peft_gpt2.adapters.folder import attach, folder_kind
from peft_gpt2.adapters.merge import merge_adapter
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models import loading as models
from peft_gpt2.run_folder import Provenance

FAST = GenerationSettings(max_new_tokens=6, stop=["###"])
TEXT = "### Instruction:\nDouble it.\n\n### Input:\n7\n\n### Response:\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two LoRA adapters of the tiny GPT-2 trained 3 steps on different data; A has rank 8, B rank 4."""
    root = tmp_path_factory.mktemp("pair")
    return {name: train_toy_adapter(root, name, rank=rank) for name, rank in (("A", 8), ("B", 4))}


@pytest.fixture()
def m(pair, tiny):
    model, tokenizer = tiny
    return AdapterSet(model, tokenizer, {"A": pair["A"], "B": pair["B"]})


def fresh_logits(path=None, text=TEXT):
    """Logits of a freshly loaded base, with the adapter at ``path`` alone (or none)."""
    model, tokenizer = models.load_base("tiny-gpt2")
    if path is not None:
        model = attach(model, path, "x")
    with torch.inference_mode():
        return model.eval()(**tokenizer([text], return_tensors="pt")).logits


def logits(m: AdapterSet, adapter: str | None = "active", text: str = TEXT) -> torch.Tensor:
    """Logits of ``text`` by a direct ``m.model`` call inside ``m.using(adapter)`` (default: the active one)."""
    with m.using(m.active if adapter == "active" else adapter), torch.inference_mode():
        return m.model(**m.tokenizer([text], return_tensors="pt")).logits


def frozen(m: AdapterSet) -> bool:
    """Eval mode all the way down (dropout off) and no gradients: inference mode."""
    return not any(x.training for x in m.model.modules()) and not any(p.requires_grad for p in m.model.parameters())


def test_names_active_and_inference_mode(m):
    assert m.names == ["A", "B"] and m.active == "A"
    assert frozen(m)


def test_swapping_is_bit_identical_to_fresh_loads(m, pair):
    seen = {}
    for name in ("A", "B", "A", "B"):
        m.use(name)
        seen.setdefault(name, []).append(logits(m))
    for name in ("A", "B"):
        expected = fresh_logits(pair[name])
        assert all(torch.equal(got, expected) for got in seen[name])
    assert not torch.allclose(seen["A"][0], seen["B"][0], atol=1e-4)  # the adapters differ
    assert not torch.allclose(seen["A"][0], fresh_logits(), atol=1e-4)  # and each matters


def test_mixed_batch_equals_single_runs(m):
    rows = ["A", "B", None]
    with torch.inference_mode():  # PEFT's per-row routing over the set's adapters
        batch = m.tokenizer([TEXT] * 3, return_tensors="pt")
        mixed = m.model(**batch, adapter_names=[r or "__base__" for r in rows]).logits
    for i, name in enumerate(rows):
        assert torch.allclose(mixed[i], logits(m, name)[0], atol=1e-5)
    prompts = [("Double it.", "7"), ("Shout it.", "cat"), ("Double it.", "3")]
    together = m.generate(prompts, adapters=rows, settings=FAST)
    alone = [m.generate([p], adapters=[n], settings=FAST)[0] for p, n in zip(prompts, rows, strict=True)]
    assert together == alone
    assert m.active == "A"  # per-call choices leave the default alone


def test_base_only_is_the_bare_base_and_restores_the_active_adapter(m):
    m.use("B")
    bare = fresh_logits()
    with m.base_only():
        assert m.active is None
        assert torch.equal(logits(m), bare)
        with torch.inference_mode():  # direct model calls see the base too
            assert torch.equal(m.model(**m.tokenizer([TEXT], return_tensors="pt")).logits, bare)
        with pytest.raises(PeftGpt2Error, match="every row runs through that one"):
            m.generate(["x"], adapters=["A"])
        with pytest.raises(PeftGpt2Error, match="cannot change adapters inside"):
            m.use("A")
    assert m.active == "B"
    assert torch.equal(logits(m), logits(m, "B"))
    assert not torch.allclose(logits(m), bare, atol=1e-4)


def test_using_routes_direct_model_calls_and_restores_the_default(m, pair):
    with m.using("B"):
        assert m.active == "B"
        with torch.inference_mode():
            direct = m.model(**m.tokenizer([TEXT], return_tensors="pt")).logits
        assert torch.equal(direct, fresh_logits(pair["B"]))
        assert m.generate(["Double it."], settings=FAST) == m.generate(["Double it."], adapters=["B"], settings=FAST)
        with pytest.raises(PeftGpt2Error, match="cannot change adapters inside"):
            m.unload("A")
    assert m.active == "A" and torch.equal(logits(m), fresh_logits(pair["A"]))
    with pytest.raises(PeftGpt2Error, match="no adapter named 'Z'"):
        m.using("Z").__enter__()


def test_combine(m):
    assert m.combine("A1", {"A": 1.0}) == "cat"
    assert torch.allclose(logits(m, "A1"), logits(m, "A"), atol=1e-5)
    assert m.names == ["A", "B", "A1"] and m.active == "A" and frozen(m)
    # "cat" is the exact sum (here of unequal ranks), which equals PEFT running both adapters at once.
    assert m.combine("AB", {"A": 1.0, "B": 1.0}) == "cat"
    m.model.base_model.set_adapter(["A", "B"], inference_mode=True)
    with torch.inference_mode():
        both = m.model(**m.tokenizer([TEXT], return_tensors="pt")).logits
    assert torch.allclose(logits(m, "AB"), both, atol=1e-5)
    with pytest.raises(PeftGpt2Error, match="already loaded"):
        m.combine("AB", {"A": 0.5})
    with pytest.raises(PeftGpt2Error, match="no adapter named 'Z'"):
        m.combine("AZ", {"A": 1.0, "Z": 1.0})
    with pytest.raises(PeftGpt2Error, match="same r"):
        m.combine("AB2", {"A": 1.0, "B": 1.0}, combination_type="linear")
    assert m.names == ["A", "B", "A1", "AB"]


def test_merge_writes_a_plain_model_folder(m, tmp_path):
    from transformers import AutoModelForCausalLM

    out = m.merge("A", tmp_path / "merged" / "A")
    assert folder_kind(out) == "model" and not (out / "adapter_config.json").exists()
    assert any(out.glob("*.safetensors")) and (out / "tokenizer_config.json").exists()
    provenance = Provenance.read(out)
    assert provenance.method == "lora-merged" and provenance.merged_adapter == "A"
    assert provenance.base_model == "tiny-gpt2" and provenance.template == "short"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.inference_mode():
        got = merged(**m.tokenizer([TEXT], return_tensors="pt")).logits
    assert torch.allclose(got, logits(m, "A"), atol=1e-4)
    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["A"]  # no temp folders left behind
    assert (out.stat().st_mode & 0o777) == 0o755 and (out / "test.json").exists()
    with pytest.raises(PeftGpt2Error, match="already exists"):
        m.merge("B", out)
    m.merge("B", out, overwrite=True)
    assert json.loads((out / "peft_gpt2.json").read_text())["merged_adapter"] == "B"
    # A combination exists only in memory; it merges all the same.
    m.combine("AB", {"A": 0.5, "B": 1.0})
    merged = AutoModelForCausalLM.from_pretrained(m.merge("AB", tmp_path / "AB")).eval()
    with torch.inference_mode():
        got = merged(**m.tokenizer([TEXT], return_tensors="pt")).logits
    assert torch.allclose(got, logits(m, "AB"), atol=1e-4)
    assert json.loads((tmp_path / "AB" / "peft_gpt2.json").read_text())["merged_from"] == "AdapterSet.combine"
    assert m.names == ["A", "B", "AB"] and frozen(m)


def test_merge_adapter_loads_one_base(pair, tmp_path, monkeypatch, tiny_path):
    """The CLI's merge: no AdapterSet, so the base loads once."""
    from transformers import AutoModelForCausalLM

    calls = []
    real = models.load_base
    monkeypatch.setattr(models, "load_base", lambda name, **kw: calls.append(name) or real(name, **kw))
    out = merge_adapter(pair["B"], tmp_path / "B")
    assert calls == ["tiny-gpt2"]
    provenance = Provenance.read(out)
    assert provenance.merged_adapter == "toy-B" and provenance.merged_from == str(pair["B"])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.inference_mode():
        got = merged(**merged_tokenizer(out)([TEXT], return_tensors="pt")).logits
    assert torch.allclose(got, fresh_logits(pair["B"]), atol=1e-4)
    with pytest.raises(PeftGpt2Error, match="full model folder already"):
        merge_adapter(tiny_path, tmp_path / "again")
    assert calls == ["tiny-gpt2", "tiny-gpt2"]  # the fresh_logits reference; the refusal loaded nothing


def merged_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_refused_folders(m, pair, tmp_path, tiny_path):
    other = tmp_path / "other"
    shutil.copytree(pair["A"], other)
    provenance = json.loads((other / "peft_gpt2.json").read_text())
    (other / "peft_gpt2.json").write_text(json.dumps({**provenance, "base_config_fingerprint": "0" * 16}))
    with pytest.raises(PeftGpt2Error, match="was trained on base"):
        m.add("other", other)
    with pytest.raises(PeftGpt2Error, match="full model folder"):
        m.add("full", tiny_path)
    with pytest.raises(PeftGpt2Error, match="neither a PEFT adapter"):
        m.add("empty", tmp_path)
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(pair["A"], pickled)
    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(PeftGpt2Error, match="pickle"):
        m.add("pickled", pickled)
    broken = tmp_path / "broken"
    shutil.copytree(pair["B"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PeftGpt2Error, match="not a readable weights file"):
        m.add("broken", broken)
    assert "broken" not in m.model.peft_config  # PEFT had added it before reading the weights
    assert m.names == ["A", "B"] and frozen(m)  # refusals change nothing
    m.allow_pickle = m.force = True
    m.add("pickled", pickled)
    m.add("other", other)
    assert torch.equal(logits(m, "pickled"), logits(m, "A"))


class RunsCode:
    """A pickle that would run a command when unpickled by anything but torch's weights-only loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copy, (__file__, str(self.marker)))


def _damaged(weights, marker) -> dict:
    def truncated(file):
        torch.save(weights, file)
        file.write_bytes(file.read_bytes()[:300])

    return {  # name: (file it is written to, writer, what the one-line error says)
        "code": (
            "bin",
            lambda f: torch.save({**weights, "x": RunsCode(marker)}, f),
            "refused it: Unsupported global: GLOBAL shutil.copy",
        ),
        "garbage": ("bin", lambda f: f.write_bytes(b"\x80\x04garbage"), "refused it: Unsupported operand"),
        "truncated": ("bin", truncated, "not a readable weights file"),
        "a list": ("bin", lambda f: torch.save(list(weights.values()), f), "it holds a list, not named tensors"),
        "half safetensors": ("safetensors", lambda f: f.write_bytes(f.read_bytes()[:200]), "SafetensorError"),
    }


@pytest.mark.parametrize("case", ["code", "garbage", "truncated", "a list", "half safetensors"])
def test_weights_refused_even_with_allow_pickle_are_one_line(pair, tmp_path, tiny, case):
    """--allow-pickle lets torch's weights-only loader read a .bin; what it refuses, and damaged files, are one line
    naming the file (before: torch's message over five lines, advising weights_only=False, i.e. running the code)."""
    from safetensors.torch import load_file

    marker = tmp_path / "code-ran"
    folder = tmp_path / "adapter"
    shutil.copytree(pair["A"], folder)
    suffix, write, message = _damaged(load_file(folder / "adapter_model.safetensors"), marker)[case]
    if suffix == "bin":
        (folder / "adapter_model.safetensors").unlink()
    write(folder / f"adapter_model.{suffix}")
    with pytest.raises(PeftGpt2Error) as err:
        attach(tiny[0], folder, "x", allow_pickle=True)
    assert str(err.value).startswith(f"{folder / f'adapter_model.{suffix}'}: not a")
    assert message in str(err.value) and "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "base", "__base__", "default", "", "x.y", "-a", "a" * 65, None, "training", "forward", "keys"],
)
def test_bad_names(m, pair, name):
    with pytest.raises(PeftGpt2Error, match="bad adapter name"):
        m.add(name, pair["A"])
    with pytest.raises(PeftGpt2Error, match="bad adapter name"):
        m.combine(name, {"A": 1.0})
    assert m.names == ["A", "B"]


def test_good_names():
    for name in ("a", "A", "alpaca-lora_2", "x" * 64, "weight", "lora_A"):
        assert check_name(name) == name


def test_unload(m, pair):
    with pytest.raises(PeftGpt2Error, match="no adapter named 'Z'; loaded: A, B"):
        m.unload("Z")
    m.unload("A")  # the active one: the base becomes the default, not whatever PEFT picks
    assert m.names == ["B"] and m.active is None and frozen(m)  # PEFT makes the next adapter trainable
    with pytest.raises(PeftGpt2Error, match="no adapter named 'A'; loaded: B"):
        m.use("A")
    with pytest.raises(PeftGpt2Error, match="no adapter named 'A'"):
        m.generate(["x"], adapters=["A"])
    assert torch.equal(logits(m, "B"), fresh_logits(pair["B"]))
    m.unload("B")  # the last one: back to the plain base model
    assert m.names == [] and torch.equal(logits(m), fresh_logits())
    assert m.generate(["Double it."], settings=FAST) == m.generate(["Double it."], adapters=[None], settings=FAST)
    m.add("A", pair["A"])
    assert m.active is None
    assert torch.equal(logits(m, "A"), fresh_logits(pair["A"]))


def test_generate_renders_the_template(m, monkeypatch):
    seen = []
    echo = lambda model, tok, texts, settings, **kw: seen.append(texts) or texts  # noqa: E731
    monkeypatch.setattr(adapter_set_module, "generate", echo)
    m.generate(["Double it.", ("Double it.", "4")])
    m.generate(["as is"], raw=True)
    assert seen[0] == [
        "### Instruction:\nDouble it.\n\n### Response:\n",  # "short": the template A was trained with
        "### Instruction:\nDouble it.\n\n### Input:\n4\n\n### Response:\n",
    ]
    assert seen[1] == ["as is"]
    m.template = "alpaca"
    m.generate(["Double it."])
    assert seen[2][0].startswith("Below is an instruction")
    with pytest.raises(PeftGpt2Error, match="no adapter named 'Z'; loaded: A, B"):
        m.generate(["x"], adapters=["Z"])
    with pytest.raises(PeftGpt2Error, match="2 adapters for 1 prompts"):
        m.generate(["x"], adapters=["A", "B"])


def test_threads_share_one_set(m):
    prompts = [("Double it.", str(i)) for i in range(4)]
    plans = [["A", "B", None, "A"], ["B", "B", "B", "B"], [None, None, "A", "B"]]
    expected = [m.generate(prompts, adapters=plan, settings=FAST) for plan in plans]
    results = [None] * len(plans)

    def work(i):
        results[i] = m.generate(prompts, adapters=plans[i], settings=FAST)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_from_paths_loads_the_recorded_base_once(pair, monkeypatch, tmp_path):
    calls = []
    real = models.load_base
    monkeypatch.setattr(models, "load_base", lambda name, **kw: calls.append(name) or real(name, **kw))
    m = AdapterSet.from_paths(None, {"A": pair["A"], "B": pair["B"]}, template="short")
    assert calls == ["tiny-gpt2"] and m.names == ["A", "B"] and m.base_name == "tiny-gpt2"
    with pytest.raises(PeftGpt2Error, match="neither a PEFT adapter"):
        AdapterSet.from_paths(None, {"A": pair["A"], "E": tmp_path})
    with pytest.raises(PeftGpt2Error, match="no base model and no adapters"):
        AdapterSet.from_paths(None, {})
    assert calls == ["tiny-gpt2"]  # bad folders fail before the base loads


def test_base_only_set(tiny):
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer)
    assert m.names == [] and m.active is None
    with m.base_only():
        assert torch.equal(logits(m), fresh_logits())
    assert len(m.generate(["Double it."], settings=FAST)) == 1


def tampered(pair, tmp_path, name: str, change) -> str:
    """A copy of adapter A whose weights file `change` rewrote (a dict of tensors in, one out)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / name
    shutil.copytree(pair["A"], folder)
    weights = folder / "adapter_model.safetensors"
    save_file(change(load_file(weights)), weights)
    return str(folder)


def _base_key(weights: dict) -> dict:
    return {**weights, "base_model.model.transformer.wte.weight": torch.zeros(50257, 64)}  # would zero the embeddings


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_base_key, "transformer.wte.weight' is not part of the adapter"),
        (lambda w: {k.replace("lora_A", "lora_X"): v for k, v in w.items()}, "is not part of the adapter"),
        (lambda w: {k: v for k, v in w.items() if ".h.1." not in k}, "is missing"),
        (lambda w: {k: (v[:-1] if "h.0.attn.c_attn.lora_A" in k else v) for k, v in w.items()}, "has shape"),
        (lambda w: {k: (v.to(torch.int32) if "lora_B" in k else v) for k, v in w.items()}, "floating-point"),
        (lambda w: {k: (v * float("nan") if "lora_B" in k else v) for k, v in w.items()}, "nan or inf"),
    ],
    ids=["base-key", "no-key-matches", "missing-module", "shape", "dtype", "nan"],
)
def test_an_adapter_may_only_change_itself(m, pair, tmp_path, change, message):
    """Each bad folder is refused naming the key; the base and the other adapters stay bitwise the same."""
    before = {name: logits(m, name) for name in (None, "A", "B")}
    with pytest.raises(PeftGpt2Error, match=message):
        m.add("bad", tampered(pair, tmp_path, "bad", change))
    assert m.names == ["A", "B"] and frozen(m)
    assert all(torch.equal(logits(m, name), before[name]) for name in before)
    model, _ = models.load_base("tiny-gpt2")
    with pytest.raises(PeftGpt2Error, match=message):  # the same check for eval, compare, merge, chat and serve
        attach(model, tampered(pair, tmp_path, "bad2", change), "x")


@pytest.mark.parametrize(("config", "message"), [("{", "not valid JSON"), ("[1]", "no base model recorded")])
def test_an_unreadable_adapter_config_names_the_file(tmp_path, config, message):
    """``base_of`` reads PEFT's record when the run has no peft_gpt2.json: a JSONDecodeError traceback before."""
    from peft_gpt2.adapters.folder import base_of

    (tmp_path / "adapter_config.json").write_text(config)
    with pytest.raises(PeftGpt2Error, match=message) as err:
        base_of(tmp_path)
    assert str(tmp_path) in str(err.value) and "pass --model" in str(err.value)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("[" * 100_000, "not valid JSON (nested too deeply)"),
        ('{"train_steps": ' + "9" * 5000 + "}", "not valid JSON (Exceeds the limit (4300 digits)"),
        ('{"recipe": "x"}', "recipe must be dict, got 'x'"),  # an AttributeError in eval/compare before
        ('{"template": 3}', "template must be str, got 3"),
        ('{"train_steps": true}', "train_steps must be int, got True"),
    ],
)
def test_a_hostile_provenance_record_is_refused_naming_the_file(tmp_path, record, message):
    """A run folder from elsewhere: its peft_gpt2.json is read before anything loads, and read as untrusted."""
    (tmp_path / "peft_gpt2.json").write_text(record)
    with pytest.raises(PeftGpt2Error, match="peft_gpt2.json: ") as err:
        Provenance.read(tmp_path)
    assert message in str(err.value)
    (tmp_path / "peft_gpt2.json").write_text('{"train_time_s": 3, "recipe": {}, "unknown": [1], "template": null}')
    assert Provenance.read(tmp_path).train_time_s == 3 and Provenance.read(tmp_path).template == "alpaca"
