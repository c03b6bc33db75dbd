"""`lorafit generate` and `lorafit analyze` through the CLI: files written, tables and JSON printed,
bad input as one line and exit 2."""

import json

from multi_fixtures import llama_adapters
from tiny import tiny_tokenizer
from typer.testing import CliRunner

from lorafit.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_mixes_adapters_and_base_rows_and_keeps_input_order(tmp_path, model_dir):
    adapters = llama_adapters(tmp_path)
    requests = tmp_path / "requests.jsonl"
    rows = [{"prompt": "name[Ginger]", "adapter": "r4"}, {"prompt": "hello", "adapter": None},
            {"prompt": "x y", "adapter": "r16", "max_new_tokens": 3}]
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = invoke("generate", "--model", model_dir, "-a", f"r4={adapters['r4'][0]}", "-a", f"r16={adapters['r16'][0]}",
                  "-i", requests, "-o", tmp_path / "out.jsonl", "--max-new-tokens", 5, "--json", "--precision", "fp32")
    assert done.exit_code == 0, done.output
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["adapter"] for r in results] == ["r4", None, "r16"]
    assert [r["completion_tokens"] for r in results] == [5, 5, 3]
    # The r4 row is what that adapter's own model generates, greedily.
    tok = tiny_tokenizer()
    ids = tok("name[Ginger]", return_tensors="pt")["input_ids"]
    out = adapters["r4"][1].generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=2)
    assert results[0]["completion"] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["requests"] == 3


def test_generate_refuses_an_unknown_adapter_name_in_one_line(tmp_path, model_dir):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": "p", "adapter": "nope"}) + "\n")
    done = invoke("generate", "--model", model_dir, "-i", requests, "-o", tmp_path / "out.jsonl")
    assert done.exit_code == 2
    assert "nope" in done.output and "Traceback" not in done.output and not (tmp_path / "out.jsonl").exists()


def test_analyze_prints_tables_and_writes_json_plots_and_a_truncated_adapter(tmp_path):
    adapters = llama_adapters(tmp_path)
    out = tmp_path / "analysis"
    done = invoke("analyze", adapters["r16"][0], "-o", out, "--truncate-rank", 2)
    assert done.exit_code == 0, done.output
    report = json.loads((out / "analysis.json").read_text())
    assert (report["truncation"]["rank"], report["truncation"]["from_rank"]) == (2, 16)
    assert 0 < report["truncation"]["energy_kept"] < 1
    assert json.loads((out / "adapter-r2" / "adapter_config.json").read_text())["r"] == 2
    assert (out / "adapter-r2" / "adapter_model.safetensors").is_file()
    assert any(p.suffix == ".png" for p in out.iterdir())
    done = invoke("analyze", adapters["r16"][0], "--truncate-rank", 2)  # needs -o
    assert done.exit_code == 2 and "-o" in done.output
