"""`run_generate` (the future `lorafit generate`): requests.jsonl -> results.jsonl with mixed adapters,
and one-line DataErrors naming file, line and field for bad rows (before any model loads)."""

import json

import pytest
import torch
from multi_fixtures import bert_adapters, llama_adapters
from tiny import save_tiny_model, tiny_tokenizer

from lorafit.adapters.host import AdapterHost
from lorafit.errors import AdapterError, DataError
from lorafit.workflows.generate import parse_adapter_args, run_generate

torch.set_num_threads(1)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_run_generate_mixed_adapters_in_input_order(tmp_path, model_dir):
    adapters = llama_adapters(tmp_path)
    dirs = {name: d for name, (d, _) in adapters.items()}
    rows = [
        {"prompt": "name[Ginger]", "adapter": "r4", "id": "a"},
        {"prompt": "hello", "adapter": None, "max_new_tokens": 5},
        {"prompt": "x y z", "adapter": "r16", "temperature": 0.8, "top_p": 0.9, "seed": 3},
        "",
        {"prompt": "select", "adapter": "r1", "max_new_tokens": 7},
        {"prompt": "name[Ginger]", "adapter": "r8"},
    ]
    requests = write_jsonl(tmp_path / "requests.jsonl", rows)
    ticks = []
    summary = run_generate(str(model_dir), dirs, requests, tmp_path / "results.jsonl", max_new_tokens=9,
                           batch_size=2, progress=ticks.append)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 3, 5, 6] and results[0]["id"] == "a"
    assert [r["adapter"] for r in results] == ["r4", None, "r16", "r1", "r8"]
    assert [r["completion_tokens"] for r in results] == [9, 5, 9, 7, 9]
    assert summary["requests"] == 5 and summary["completion_tokens"] == 39 and sum(ticks) == 5
    # Greedy rows equal each adapter's own model.generate.
    tok = tiny_tokenizer()
    for result, row in ((results[0], rows[0]), (results[3], rows[4]), (results[4], rows[5])):
        ids = tok(row["prompt"], return_tensors="pt")["input_ids"]
        out = adapters[row["adapter"]][1].generate(input_ids=ids, max_new_tokens=row.get("max_new_tokens", 9),
                                                   do_sample=False, pad_token_id=0, eos_token_id=2)
        assert result["completion"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # Sampled row: reproducible from its seed.
    again = run_generate(str(model_dir), dirs, requests, tmp_path / "again.jsonl", max_new_tokens=9)
    assert again["completion_tokens"] == 39
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "results.jsonl").read_text()


@pytest.mark.parametrize("line, expected", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"adapter": "r1"}', "prompt: must be a non-empty string"),
    ('{"prompt": "p", "adaptor": "r1"}', "adaptor: unknown field (did you mean 'adapter'?)"),
    ('{"prompt": "p", "adapter": "nope"}', "adapter: 'nope' is not a loaded adapter (loaded: r1)"),
    ('{"prompt": "p", "max_new_tokens": 0}', "max_new_tokens: must be >= 1, got 0"),
    ('{"prompt": "p", "max_new_tokens": true}', "max_new_tokens: must be an integer"),
    ('{"prompt": "p", "temperature": -1}', "temperature: must be >= 0"),
    ('{"prompt": "p", "top_p": 0}', "top_p: must be > 0 and <= 1"),
    ('{"prompt": "p", "seed": "x"}', "seed: must be an integer"),
])
def test_bad_rows_name_file_line_and_field_before_loading(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "req.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(DataError) as e:
        run_generate("no-such-model-dir/", {"r1": str(tmp_path)}, path, tmp_path / "out.jsonl")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path} line 2: ") and expected in message, message


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        run_generate("m/", {}, tmp_path / "absent.jsonl", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="has no data rows"):
        run_generate("m/", {}, write_jsonl(tmp_path / "e.jsonl", ["", "  "]), tmp_path / "o.jsonl")


def test_host_loads_an_encoder_for_classification(tmp_path):
    base = save_tiny_model(tmp_path / "bert", "bert", num_labels=2)
    host = AdapterHost.load(str(base), precision="fp32")
    assert not host.causal
    adapters = bert_adapters(tmp_path)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    got = host.classify(["good", "bad", "ok"], adapter=["nli", "sst", "cola"])
    assert [len(r["logits"]) for r in got] == [3, 2, 2]
    enc = host.tokenizer("bad", return_tensors="pt")
    with torch.no_grad():
        alone = adapters["sst"][1](**enc).logits[0]
    torch.testing.assert_close(torch.tensor(got[1]["logits"]), alone, atol=1e-5, rtol=0)


def test_adapter_arguments():
    assert parse_adapter_args(["sql=runs/a", " e2e = runs/b "]) == {"sql": "runs/a", "e2e": "runs/b"}
    for bad, words in ((["sql"], "expected NAME=DIR"), (["=dir"], "expected NAME=DIR"), (["a=x", "a=y"], "given twice")):
        with pytest.raises(AdapterError, match=words):
            parse_adapter_args(bad)


TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_rows_with_messages_and_stop_strings_and_cli_defaults(tmp_path, model_dir):
    """A chat row goes through the template; a stop string ends the completion before it (and its row
    leaves the batch: completion_tokens counts up to the token that completed it); --temperature and
    --stop are the defaults of rows that do not set them. `-a NAME=RUN_DIR` takes the run's adapter."""
    import shutil

    from typer.testing import CliRunner

    from lorafit.cli import app as cli

    chat_model = tmp_path / "chat-model"
    shutil.copytree(model_dir, chat_model)
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(chat_model)
    adapters = llama_adapters(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(adapters["r4"][0], run_dir / "adapter")
    (run_dir / "recipe.yaml").write_text("name: r4\n")
    host = AdapterHost.load(str(chat_model), precision="fp32")
    host.load_adapter("r4", adapters["r4"][0])
    chat_text = host.tokenizer.decode(host.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)["input_ids"][1:])
    chat_ref = host.generate([chat_text], "r4", max_new_tokens=30)[0]
    stop = chat_ref.text[6:8]
    k = next(i for i in range(1, 31) if stop in tok.decode(chat_ref.tokens[:i], skip_special_tokens=True))
    rows = [{"messages": [{"role": "user", "content": "hi"}], "adapter": "r4", "max_new_tokens": 30, "temperature": 0},
            {"messages": [{"role": "user", "content": "hi"}], "adapter": "r4", "max_new_tokens": 30, "stop": [],
             "seed": 5},
            {"prompt": "name[Ginger]", "adapter": "r4", "max_new_tokens": 6, "temperature": 0.0}]
    requests = write_jsonl(tmp_path / "requests.jsonl", rows)
    out = tmp_path / "out.jsonl"
    done = CliRunner().invoke(cli, ["generate", "-m", str(chat_model), "-a", f"r4={run_dir}", "-i", str(requests),
                                    "-o", str(out), "--stop", stop, "--temperature", "0.7", "--precision", "fp32"])
    assert done.exit_code == 0, done.output
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert results[0]["completion"] == chat_ref.text[: chat_ref.text.find(stop)] and results[0]["finish_reason"] == "stop"
    assert results[0]["completion_tokens"] == k and results[0]["prompt_tokens"] == len(host.tokenizer(chat_text)["input_ids"])
    # Row 2 sets no stop ("stop": [] overrides --stop) and samples at the default --temperature 0.7.
    sampled = host.generate([chat_text], "r4", max_new_tokens=30, temperature=0.7, seed=5)[0]
    assert results[1]["completion"] == sampled.text and results[1]["finish_reason"] == sampled.finish_reason
    assert results[2]["completion"] == host.generate(["name[Ginger]"], "r4", max_new_tokens=6)[0].text


@pytest.mark.parametrize("line, expected", [
    ('{"prompt": "p", "messages": [{"role": "user", "content": "x"}]}', "prompt: give either prompt or messages"),
    ('{"messages": []}', "messages: must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', "messages[0]: must be an object with string role and content"),
    ('{"prompt": "p", "stop": ["a", "b", "c", "d", "e"]}', "stop: must be a non-empty string or a list of up to 4"),
    ('{"prompt": "p", "stop": [""]}', "stop: must be a non-empty string"),
    ('{"prompt": "p", "seed": 18446744073709551616}', "seed: must be >= 0 and <= 9223372036854775807"),
])
def test_bad_chat_and_stop_rows(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "req.jsonl", [line])
    with pytest.raises(DataError) as e:
        run_generate("no-such-model-dir/", {}, path, tmp_path / "out.jsonl")
    assert str(e.value).startswith(f"{path} line 1: ") and expected in str(e.value), str(e.value)


def test_a_run_directory_stands_for_its_adapter(tmp_path):
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    (tmp_path / "run" / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(AdapterError, match="the run directory has no LoRA adapter"):
        parse_adapter_args([f"a={tmp_path / 'run'}"])
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    assert parse_adapter_args([f"a={tmp_path / 'run'}"]) == {"a": str(tmp_path / "run" / "adapter")}
