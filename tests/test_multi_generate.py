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
    ("{not json", "not valid JSON"),
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
    assert "\n" not in message and message.startswith(f"{path}:2: ") and expected in message, message


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        run_generate("m/", {}, tmp_path / "absent.jsonl", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="no requests"):
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
