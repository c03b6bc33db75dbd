"""Bad input through the CLI: each case ends with one `error: ...` line on stderr naming the file, key
or value, the documented exit code, no traceback, and nothing that was saved before damaged.

Most cases run in-process (CliRunner); a few run as real processes to show that a real stderr gets
one line and no traceback. Exit codes: 0 ok, 1 other, 2 bad input, 3 diverged, 130 interrupted.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cli_runs import (
    TINY_RECIPE,
    assert_one_line_error,
    run_cli,
    run_subprocess,
    tree_bytes,
    write_recipe,
)
from safetensors.torch import load_file, save_file
from tiny import randomize_lora, tiny_llama, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

import lorafit.lora.adapter as adapter_module
from lorafit import errors
from lorafit.errors import WriteError
from lorafit.lora import LoraSpec, add_lora, read_adapter_tensors, save_adapter
from lorafit.models.loader import load_adapter
from lorafit.runs.rundir import RunDir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_steps: 40": "max_steps: 4", "save_every: 5": "save_every: 2"}


def short_recipe(**replace: str) -> str:
    """The tiny recipe cut to 4 steps (a checkpoint every 2), with `old=new` text replacements."""
    text = TINY_RECIPE
    for old, new in {**SHORT, **replace}.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dir) -> Path:
    """A finished 4-step run of the tiny recipe (do not modify: copy it)."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "tiny.yaml"
    recipe.write_text(short_recipe().format(model=model_dir))
    result = run_cli(["train", recipe, "-o", root / "run", "-q"])
    assert result.exit_code == 0, result.output
    return root / "run"


def other_llama(path: Path, **config) -> Path:
    """A tiny Llama like tiny.tiny_llama but with some config values changed, saved with a tokenizer."""
    settings = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(LlamaConfig(**{**settings, **config})).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def adapted_llama(seed: int):
    """A tiny Llama with LoRA on q/v and random (as if trained) LoRA weights."""
    model, spec = tiny_llama(), LoraSpec(rank=4, alpha=8.0)
    add_lora(model, spec)
    randomize_lora(model, seed=seed)
    return model, spec


def fails(args: list, code: int, *fragments: str) -> str:
    result = run_cli(args)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return assert_one_line_error(result.stderr, *fragments)


# ---- recipes --------------------------------------------------------------------------------------

RECIPE_CASES = {
    "yaml-syntax": ("lora:\n  rank: 4\n dropout: 0.1\n", ["bad.yaml:", "YAML syntax error"]),
    "unknown-key": ("lora:\n  rnak: 4\n", ["bad.yaml:4", "lora.rnak", "did you mean 'rank'"]),
    "wrong-type": ("lora:\n  rank: four\n", ["bad.yaml:4", "lora.rank", "'four'"]),
    "rank-zero": ("lora:\n  rank: 0\n", ["bad.yaml:4", "lora.rank", "must be > 0, got 0"]),
    "dropout-one": ("lora:\n  dropout: 1.0\n", ["bad.yaml:4", "lora.dropout", "[0, 1)", "1.0"]),
    "dropout-negative": ("lora:\n  dropout: -0.1\n", ["bad.yaml:4", "lora.dropout", "-0.1"]),
    "lr-zero": ("train:\n  lr: 0\n", ["bad.yaml:4", "train.lr", "must be > 0, got 0"]),
    "lr-negative": ("train:\n  lr: -1.0e-4\n", ["bad.yaml:4", "train.lr", "-0.0001"]),
}


@pytest.mark.parametrize("case", RECIPE_CASES)
def test_bad_recipe_is_one_line_exit_2(tmp_path, model_dir, case):
    body, fragments = RECIPE_CASES[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"model: {model_dir}\ntask: quickstart\n{body}")
    line = fails(["train", recipe, "-o", tmp_path / "run"], 2, *fragments)
    if case == "yaml-syntax":
        assert re.search(r"bad\.yaml:\d+:\d+:", line), line
    assert not (tmp_path / "run").exists()


def test_bad_set_override_and_missing_recipe(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir)
    fails(["train", recipe, "--set", "train.lr=-1"], 2, "train.lr", "-1")
    fails(["train", recipe, "--set", "lora.rnak=4"], 2, "--set lora.rnak=4", "did you mean 'lora.rank'")
    fails(["train", tmp_path / "nope.yaml"], 2, "nope.yaml", "No such file")


def test_targets_matching_nothing_name_the_key(tmp_path, model_dir):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(short_recipe(**{"targets: [q_proj, v_proj]": "targets: [nope_proj]"}).format(model=model_dir))
    fails(["train", recipe, "-o", tmp_path / "run"], 2, "lora.targets", "'nope_proj'", "q_proj")
    fails(["inspect", recipe], 2, "lora.targets", "'nope_proj'")
    regex = short_recipe(**{"targets: [q_proj, v_proj]": "targets_regex: '.*nothing'"}).format(model=model_dir)
    recipe.write_text(regex)
    fails(["train", recipe, "-o", tmp_path / "run"], 2, "lora.targets_regex", "'.*nothing'")
    assert not (tmp_path / "run").exists()


def test_unknown_model_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(short_recipe().format(model="no-such-org/no-such-model"))
    started = time.perf_counter()
    fails(["train", recipe, "-o", tmp_path / "run"], 2, "'no-such-org/no-such-model'", "HF_HUB_OFFLINE")
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "run").exists()


def test_bad_recipe_in_a_real_process_prints_one_line(tmp_path, model_dir):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"model: {model_dir}\ntask: quickstart\nlora:\n  rnak: 4\n")
    done = run_subprocess(["train", recipe], tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "bad.yaml:4", "lora.rnak", "did you mean 'rank'")


# ---- data (task: text) ----------------------------------------------------------------------------


def text_recipe(tmp_path: Path, model_dir: Path, train_file: Path, max_length: int = 96) -> Path:
    recipe = tmp_path / "text.yaml"
    recipe.write_text(
        f"model: {model_dir}\ntask: text\n"
        f"data: {{train_file: {train_file}, prompt_template: 'Q: {{question}} A:', completion_field: answer, "
        f"max_length: {max_length}}}\n"
        "train: {max_steps: 1, batch_size: 2}\nlog: {plot: false}\n"
    )
    return recipe


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("missing.jsonl", None, ["data.train_file not found", "missing.jsonl"]),
        ("empty.jsonl", b"", ["empty.jsonl", "is empty"]),
        ("nocol.jsonl", b'{"question": "x", "reply": " y"}\n', ["nocol.jsonl line 1", "no field 'answer'"]),
        ("nocol.csv", b"question,reply\nx,y\n", ["nocol.csv", "no column 'answer'", "question, reply"]),
        ("latin1.jsonl", '{"question": "caf\xe9", "answer": " y"}\n'.encode("latin-1"),
         ["latin1.jsonl", "is not UTF-8", "byte 0xe9", "line 1"]),
        ("broken.jsonl", b'{"question": "x", "answer": " y"}\n{"question": \n', ["broken.jsonl line 2", "invalid JSON"]),
    ],
)
def test_bad_data_file_is_one_line_exit_2(tmp_path, model_dir, name, content, fragments):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    fails(["train", text_recipe(tmp_path, model_dir, path), "-o", tmp_path / "run"], 2, *fragments)
    assert not (tmp_path / "run").exists()


def test_too_long_examples_are_truncated_or_skipped_and_counted(tmp_path, model_dir):
    rows = [{"question": "short", "answer": " yes"}] * 2
    rows += [{"question": "long " * 40, "answer": " yes"}] * 3  # prompt cut from the left
    rows += [{"question": "x", "answer": " no" * 60}] * 2  # the completion alone does not fit: skipped
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli(["train", text_recipe(tmp_path, model_dir, path, max_length=64), "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert "data: 5 train / 0 validation examples (3 truncated, 2 skipped as too long); batching pack" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train_truncated"], summary["train_skipped"]) == (3, 2)


# ---- adapters (merge, eval) -----------------------------------------------------------------------


def damaged_adapter(trained: Path, tmp_path: Path, damage: str) -> tuple[Path, list[str]]:
    """A copy of the trained adapter with one thing wrong; returns it and what the error must say."""
    adapter = shutil.copytree(trained / "adapter", tmp_path / "adapter")
    weights, config = adapter / "adapter_model.safetensors", adapter / "adapter_config.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return adapter, [str(weights), "corrupted or truncated"]
    if damage == "corrupted":
        data = bytearray(weights.read_bytes())
        data[8:24] = b"\x00garbage\xff\xfe{{{{{{"
        weights.write_bytes(bytes(data))
        return adapter, [str(weights), "corrupted or truncated"]
    if damage == "no-config":
        config.unlink()
        return adapter, [str(config), "missing"]
    settings = json.loads(config.read_text())
    if damage == "other-sizes":  # another base: hidden size 48 (every LoRA shape differs)
        settings["base_model_name_or_path"] = str(other_llama(tmp_path / "wide", hidden_size=48))
        expected = ["trained on another base model", "hidden_size", "32", "48"]
    elif damage == "other-layout":  # same sizes and LoRA shapes; only the recorded fingerprint differs
        settings["base_model_name_or_path"] = str(other_llama(tmp_path / "mlp96", intermediate_size=96))
        expected = ["trained on another base model", "fingerprint"]
    elif damage == "peft-other-shapes":  # no lorafit metadata (as PEFT saves): tensor shapes decide
        settings["base_model_name_or_path"] = str(other_llama(tmp_path / "wide", hidden_size=48))
        save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
        expected = ["has shape (4, 32)", "(4, 48)", "another base model"]
    config.write_text(json.dumps(settings))
    return adapter, [str(adapter), *expected]


ADAPTER_DAMAGE = ["truncated", "corrupted", "no-config", "other-sizes", "other-layout", "peft-other-shapes"]


@pytest.mark.parametrize("damage", ADAPTER_DAMAGE)
def test_bad_adapter_is_refused_before_any_output(tmp_path, trained, damage):
    adapter, fragments = damaged_adapter(trained, tmp_path, damage)
    before = tree_bytes(adapter)
    fails(["merge", adapter, "-o", tmp_path / "merged"], 2, *fragments)
    assert not (tmp_path / "merged").exists()
    fails(["eval", adapter, "--task", "quickstart", "--limit", "2", "-o", tmp_path / "eval.json"], 2, *fragments)
    assert not (tmp_path / "eval.json").exists()
    assert tree_bytes(adapter) == before
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(("wide", "mlp96"))] == ["adapter"]


def test_bad_adapter_in_a_real_process_prints_one_line(tmp_path, trained):
    adapter, fragments = damaged_adapter(trained, tmp_path, "truncated")
    done = run_subprocess(["merge", adapter, "-o", tmp_path / "merged"], tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, *fragments)
    assert not (tmp_path / "merged").exists()


def test_merge_into_an_existing_output_needs_overwrite(tmp_path, trained):
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("mine")
    fails(["merge", trained, "-o", tmp_path / "merged"], 2, str(tmp_path / "merged"), "--overwrite")
    assert tree_bytes(tmp_path / "merged") == {"keep.txt": b"mine"}


def test_eval_without_task_names_the_target_it_could_not_use(tmp_path):
    """Without --task only a run directory says which task to score; a typo'd or plain directory is named."""
    fails(["eval", tmp_path / "typo-run"], 2, str(tmp_path / "typo-run"), "no such run directory")
    (tmp_path / "plain").mkdir()
    fails(["eval", tmp_path / "plain"], 2, str(tmp_path / "plain"), "not a run directory", "recipe.yaml", "--task")
    fails(["eval", "smollm2-135m"], 2, "--task is required")


# ---- training -------------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, model_dir):
    """lr 1e30 blows the LoRA weights up in a step or two; the loss turns inf/nan a step later."""
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir)
    run = tmp_path / "run"
    overrides = ["--set", "train.lr=1e30", "--set", "train.save_every=1", "--set", "train.warmup_steps=0"]
    line = fails(["train", recipe, "-o", run, *overrides], 3, "training loss became", "the last good checkpoint is kept")
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert not (run / "adapter").exists()
    assert not list(run.glob(".adapter*"))
    newest = sorted((run / "checkpoints").iterdir())[-1]
    assert newest.name == f"step-{step - 1:06d}"  # the last step whose loss was finite
    path, snapshot = RunDir(run).latest_checkpoint()
    assert path == newest and snapshot["state"]["step"] == step - 1


def test_an_existing_run_is_not_overwritten_without_overwrite(tmp_path, trained, model_dir):
    run = shutil.copytree(trained, tmp_path / "run")
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir)
    before = tree_bytes(run)
    fails(["train", recipe, "-o", run], 2, str(run), "already holds a run", "--overwrite", "--resume")
    fails(["train", recipe, "-o", run, "--resume", "--overwrite"], 2, "pass only one")
    fails(["train", run], 2, str(run), "is a directory", "--resume")
    fails(["train", "--resume", run, "-o", tmp_path / "elsewhere"], 2, "--output", "differs")
    assert tree_bytes(run) == before
    fails(["train", "--resume", tmp_path], 2, str(tmp_path), "nothing to resume")
    fails(["train", recipe, "-o", tmp_path / "fresh", "--resume"], 2, "nothing to resume")
    (tmp_path / "file").write_text("x")
    fails(["train", recipe, "-o", tmp_path / "file"], 2, "not a directory")


# ---- a save that fails midway ---------------------------------------------------------------------


def test_failed_adapter_save_keeps_the_previous_adapter(tmp_path, trained, monkeypatch):
    """The disk fills up halfway through writing the adapter (of a run resumed at its end): exit 1,
    one line naming the adapter directory, the previous adapter byte-identical and loadable."""
    run = shutil.copytree(trained, tmp_path / "run")
    before = tree_bytes(run / "adapter")

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half an adapter")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(adapter_module, "save_file", disk_full)
    fails(["train", "--resume", run], 1, f"cannot write {run / 'adapter'}", "No space left on device", "unchanged")
    assert tree_bytes(run / "adapter") == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temporary leftovers
    monkeypatch.undo()
    load_adapter(run / "adapter")  # loads, fits its base


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root with CAP_SYS_ADMIN; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def fill_up(disk: Path) -> None:
    """Fill `disk` to the last byte with a file named filler."""
    with open(disk / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush on close
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_full_disk_keeps_the_previous_adapter(small_disk):
    """On a real filesystem that fills up: save_adapter (what `lorafit train` calls) raises one
    WriteError and the adapter already there is untouched."""
    model, spec = adapted_llama(seed=2)
    target = small_disk / "adapter"
    save_adapter(model, target, spec, base_model_name_or_path="tiny", task_type="CAUSAL_LM")
    before = tree_bytes(target)
    fill_up(small_disk)
    model, spec = adapted_llama(seed=9)
    with pytest.raises(WriteError, match=f"cannot write {target}: No space left on device"):
        save_adapter(model, target, spec, base_model_name_or_path="tiny", task_type="CAUSAL_LM")
    assert tree_bytes(target) == before
    read_adapter_tensors(target)
    assert sorted(p.name for p in small_disk.iterdir()) == ["adapter", "filler"]


def test_full_disk_during_merge_keeps_the_previous_output(small_disk, trained):
    """`lorafit merge --overwrite` onto a full disk: exit 1, one line, the old merged model intact."""
    out = small_disk / "merged"
    assert run_cli(["merge", trained, "-o", out]).exit_code == 0
    before = tree_bytes(out)
    fill_up(small_disk)
    fails(["merge", trained, "-o", out, "--overwrite"], 1, f"cannot write {out}: No space left on device")
    assert tree_bytes(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "merged"]


# ---- exit codes -----------------------------------------------------------------------------------


def test_exit_codes_are_documented_as_implemented():
    text = (REPO_ROOT / "docs" / "trust.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `?(\d+)`? \| ([^|]+)\|", text, flags=re.MULTILINE))
    assert set(table) == {"0", "1", "2", "3", "130"}
    assert {errors.EXIT_OK, errors.EXIT_OTHER, errors.EXIT_BAD_INPUT, errors.EXIT_DIVERGED,
            errors.EXIT_INTERRUPTED} == set(map(int, table))
    assert "diverged" in table[str(errors.EXIT_DIVERGED)].lower()
    assert "interrupted" in table[str(errors.EXIT_INTERRUPTED)].lower()
    for cls in (errors.RecipeError, errors.DataError, errors.ModelError, errors.AdapterError, errors.TargetError,
                errors.RunDirError, errors.MergeError):
        assert cls.exit_code == errors.EXIT_BAD_INPUT, cls
    assert errors.DivergedError.exit_code == errors.EXIT_DIVERGED
    assert errors.WriteError.exit_code == errors.EXIT_OTHER
