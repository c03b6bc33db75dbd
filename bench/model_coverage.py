"""Which model families lorafit supports, checked end to end on tiny random models of each family.

    python bench/model_coverage.py                # every check, `lorafit serve` included; writes docs/models.md
    python bench/model_coverage.py --no-serve     # without the serve column (it then says "not checked")
    python bench/model_coverage.py --families mistral,gemma2 --print   # a few rows to the terminal
    python bench/model_coverage.py --families deberta_v2   # rechecks these rows of docs/models.md, keeps the others

Each family's tiny model (tests/families.py: 2 layers, hidden 32, 8-token sliding windows) is saved as
a model directory, then, as a user would:
- train:    `lorafit train` 2 steps on the quickstart task (encoders: a small text-classification file)
            with the recipe defaults: `lora.targets: default`, `train.batching: auto`;
- pack:     whether `auto` chose packed rows (its data line says why not);
- merge:    `lorafit merge` of the run, which reloads what it wrote and compares logits (self-verified);
- generate: the trained adapter and the base decoding together in one DecodeBatch (rows joining
            mid-decode, prompts + generations longer than the window), each row's greedy tokens equal to
            PEFT's single-adapter `generate` (fp32); encoders: AdapterHost.classify's logits = PEFT's;
- serve:    a real `lorafit serve` process, one completion (classifier: not served) whose tokens equal
            PEFT's greedy tokens;
- nproc, quantize: not checked here (no cell claims them).

tests/test_coverage.py runs these same functions (serve in a slow test) and asserts docs/models.md
holds what they report, so the table cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402
from families import CAUSAL_FAMILIES, ENCODER_FAMILIES, build  # noqa: E402
from tiny import tiny_tokenizer  # noqa: E402

COLUMNS = ("train", "pack", "merge", "generate", "serve", "nproc", "quantize")
DEFAULT_COLUMNS = ("train", "pack", "merge", "generate")  # checked by the default test run
NOT_CHECKED = "not checked"
DOC = REPO / "docs" / "models.md"

NAMES = {
    "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
    "gemma2": "Gemma 2", "gemma3_text": "Gemma 3 (text)", "phi3": "Phi-3", "gpt2": "GPT-2", "gpt_neox": "GPT-NeoX",
    "opt": "OPT", "falcon": "Falcon", "bloom": "BLOOM", "starcoder2": "StarCoder2", "llama4_text": "Llama 4 (text)",
    "bert": "BERT", "roberta": "RoBERTa", "deberta_v2": "DeBERTa-v2", "distilbert": "DistilBERT",
}
NEW_TOKENS = 10
PROMPTS = ("name[Ginger], species[cat], age[2 years]", "Listing:", "The quick brown fox jumps over")

CAUSAL_RECIPE = """\
name: coverage
model: {model}
task: quickstart
seed: 0
data:
  max_length: 96
  max_train_examples: 8
  max_valid_examples: 2
train:
  max_steps: 2
  batch_size: 4
  lr: 1.0e-2
  warmup_steps: 0
eval:
  at_end: false
log:
  plot: false
"""
ENCODER_RECIPE = """\
name: coverage
model: {model}
task: text
seed: 0
data:
  source: {data}
  text_field: text
  label_field: label
  num_labels: 2
  valid_fraction: 0.25
  max_length: 32
train:
  max_steps: 2
  batch_size: 4
  lr: 1.0e-2
  warmup_steps: 0
eval:
  at_end: false
log:
  plot: false
"""


@dataclass
class Family:
    """One family's model directory and what its checks found (column -> cell text)."""

    name: str
    root: Path
    cells: dict
    targets: str = ""

    @property
    def causal(self) -> bool:
        return self.name in CAUSAL_FAMILIES

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "run" / "adapter"


def _no(reason: str) -> str:
    return "no: " + " ".join(reason.split())  # one line in a table cell


def _cli(args: list) -> tuple[int, str]:
    """`lorafit ARGS` in this process (one torch thread); exit code and everything it printed."""
    from typer.testing import CliRunner

    from lorafit.cli import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    return result.exit_code, result.output


def _error_line(output: str) -> str:
    errors = [line[len("error: "):] for line in output.splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else output.strip().splitlines()[-1] if output.strip() else "no output"


def save_family(family: str, root: Path) -> Family:
    """The family's tiny model + tokenizer in root/model (encoders without a head, as checkpoints ship)."""
    root.mkdir(parents=True, exist_ok=True)
    model = build(family)
    (model if family in CAUSAL_FAMILIES else model.base_model).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    return Family(family, root, {c: NOT_CHECKED for c in COLUMNS})


def check_train(fam: Family) -> None:
    """`lorafit train` with the defaults: the train and pack cells, and the adapter's target_modules."""
    if fam.causal:
        recipe = CAUSAL_RECIPE.format(model=fam.model_dir)
    else:
        data = fam.root / "labels.jsonl"
        words = ["good", "bad", "fine film", "awful plot", "great", "dull", "lovely cast", "boring"]
        data.write_text("".join(json.dumps({"text": f"{w} {i}", "label": i % 2}) + "\n"
                                for i, w in enumerate(words * 2)))
        recipe = ENCODER_RECIPE.format(model=fam.model_dir, data=data)
    (fam.root / "recipe.yaml").write_text(recipe)
    code, output = _cli(["train", fam.root / "recipe.yaml", "-o", fam.root / "run", "--no-cache", "--overwrite"])
    if code != 0:
        fam.cells["train"] = _no(_error_line(output))
        return
    fam.cells["train"] = "yes"
    batching = next(line.split("batching ", 1)[1] for line in output.splitlines() if "; batching " in line)
    if not fam.causal:
        fam.cells["pack"] = "n/a (classifier)"
    else:
        fam.cells["pack"] = "yes" if batching == "pack" else _no(batching.split("cannot pack: ", 1)[-1].rstrip(")"))
    targets = json.loads((fam.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    fam.targets = ", ".join(targets) if isinstance(targets, list) else targets


def check_merge(fam: Family) -> None:
    """`lorafit merge` (self-verified: it reloads the merged model and compares logits)."""
    if fam.cells["train"] != "yes":
        fam.cells["merge"] = "no: not trained"
        return
    code, output = _cli(["merge", fam.root / "run", "-o", fam.root / "merged", "--json"])
    fam.cells["merge"] = "yes" if code == 0 else _no(_error_line(output))


def peft_model(fam: Family):
    """The trained adapter on a fresh copy of the base, through PEFT: the reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if fam.causal else AutoModelForSequenceClassification
    base = auto.from_pretrained(fam.model_dir, **({} if fam.causal else {"num_labels": 2}))
    return PeftModel.from_pretrained(base, str(fam.adapter_dir)).eval()


def peft_greedy(model, prompt_ids: list[int], n: int = NEW_TOKENS) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def check_generate(fam: Family) -> None:
    """Mixed decode (base row + adapter rows, one joining mid-decode) = PEFT; encoders: classify = PEFT."""
    from lorafit.adapters.decode import DecodeBatch, Request
    from lorafit.adapters.host import AdapterHost
    from lorafit.errors import LorafitError

    if fam.cells["train"] != "yes":
        fam.cells["generate"] = "no: not trained"
        return
    try:
        host = AdapterHost.load(str(fam.model_dir), task="generate" if fam.causal else "classify",
                                precision="fp32", pack_weights=False)
        host.load_adapter("a", fam.adapter_dir)
    except LorafitError as e:
        fam.cells["generate"] = _no(f"refused at load: {e}")
        return
    reference = peft_model(fam)
    if not fam.causal:
        texts = ["good 3", "awful plot 1", "lovely"]
        got = torch.tensor([row["logits"] for row in host.classify(texts, "a")])
        with torch.no_grad():
            expected = reference(**host.tokenizer(texts, padding=True, return_tensors="pt")).logits
        close = torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
        fam.cells["generate"] = "yes (classify)" if close else _no(f"logits differ from PEFT's by {(got - expected).abs().max():.2e}")
        return
    ids = [host.tokenizer(p)["input_ids"] for p in PROMPTS]
    slots = [0, host.adapters()["a"]["slot"], host.adapters()["a"]["slot"]]
    batch = DecodeBatch(host.model, host.routing, [], 0)
    done = batch.add([Request(ids[i], slots[i], NEW_TOKENS, key=i) for i in (0, 1)])
    for _ in range(3):
        done += batch.step()
    done += batch.add([Request(ids[2], slots[2], NEW_TOKENS, key=2)])  # joins mid-decode
    while batch.rows:
        done += batch.step()
    got = {row.request.key: row.tokens for row in done}
    with reference.disable_adapter():
        expected = [peft_greedy(reference, ids[0])]
    expected += [peft_greedy(reference, ids[i]) for i in (1, 2)]
    same = [got[i] == expected[i] for i in range(3)]
    fam.cells["generate"] = "yes" if all(same) else _no(f"greedy tokens differ from PEFT's in rows {same}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_serve(fam: Family, timeout: float = 120) -> None:
    """A real `lorafit serve` on the family's base + adapter, one greedy completion = PEFT's tokens."""
    import httpx

    if not fam.causal:
        fam.cells["serve"] = "n/a (classifier)"
        return
    if fam.cells["train"] != "yes":
        fam.cells["serve"] = "no: not trained"
        return
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", LORAFIT_API_KEY="")
    log_path = fam.root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lorafit", "serve", "--port", str(port), "--model",
                                 str(fam.model_dir), "--name", "base", "--precision", "fp32",
                                 "--adapter", f"a={fam.adapter_dir}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + timeout
        while True:
            if proc.poll() is not None:
                fam.cells["serve"] = _no(_error_line(log_path.read_text()))
                return
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                fam.cells["serve"] = "no: not ready in time"
                return
            time.sleep(0.2)
        prompt_ids = tiny_tokenizer()(PROMPTS[0])["input_ids"]
        reply = httpx.post(url + "/v1/completions", timeout=60, json={
            "model": "a", "prompt": prompt_ids, "max_tokens": NEW_TOKENS, "temperature": 0,
            "return_token_ids": True, "ignore_eos": True})
        if reply.status_code != 200:
            fam.cells["serve"] = _no(f"HTTP {reply.status_code}: {reply.text[:200]}")
            return
        tokens = reply.json()["choices"][0]["token_ids"]
        expected = peft_greedy(peft_model(fam), prompt_ids)
        fam.cells["serve"] = "yes" if tokens == expected[: len(tokens)] and tokens else _no(
            "completion tokens differ from PEFT's greedy tokens")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_family(family: str, root: Path, serve: bool = False) -> Family:
    """Every default check on `family` (and serve if asked), in order; the cells say what each found."""
    fam = save_family(family, root)
    check_train(fam)
    check_merge(fam)
    check_generate(fam)
    if serve:
        check_serve(fam)
    return fam


def table(families: list[Family]) -> str:
    """The coverage table as Markdown: one row per family, one column per check."""
    lines = ["| family | model type | `default` targets | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for fam in families:
        model_type = build_config_type(fam.name)
        cells = [fam.cells[c] for c in COLUMNS]
        lines.append(f"| {NAMES[fam.name]} | `{model_type}` | {fam.targets or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_config_type(family: str) -> str:
    from families import config

    return config(family).model_type


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """docs/models.md's table back as family display name -> column -> cell."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| family")]
    out = {}
    for line in rows:
        parts = [p.strip() for p in line.strip("|").split(" | ")]
        out[parts[0]] = dict(zip(("model type", "default targets", *COLUMNS), parts[1:], strict=True))
    return out


INTRO = """\
# Does lorafit support my model?

What each architecture family does in lorafit, checked end to end on a tiny random model of that family
(2 layers, hidden size 32-64, built from its transformers config; sliding windows of 8 tokens, so the
window really shapes the output). **Generated by `python bench/model_coverage.py`; do not edit by hand.**
`tests/test_coverage.py` runs the same checks and fails when this table no longer says what they find
(the serve column in a slow test).

- **train**: `lorafit train` with the recipe defaults (`lora.targets: default`, `train.batching: auto`).
  An encoder's new head is trained in full and saved with the adapter (`classifier`; DistilBERT's
  `pre_classifier`; DeBERTa's `pooler`, which its checkpoints do not hold).
- **pack**: whether `batching: auto` trains on packed rows; otherwise it buckets, and says why.
- **merge**: `lorafit merge`, which reloads the merged model and compares its logits with the adapter's.
- **generate**: base and adapter rows decoded together (a row joining mid-decode, prompts + generations
  longer than the window), greedy tokens equal to PEFT's `generate` (fp32); for an encoder,
  `AdapterHost.classify`'s logits equal to PEFT's.
- **serve**: a real `lorafit serve` process, one completion equal to PEFT's greedy tokens.
- **nproc** (`lorafit train --nproc N`) and **quantize** (a quantized base): not checked per family here.

## `lora.targets: default`

A recipe that names no targets adapts the attention's query and value projections, as the LoRA paper
and PEFT do. Known model types use a table (`lorafit/lora/targets.py`, `QUERY_VALUE_BY_MODEL_TYPE`); for
another type the rule is: the first of these leaf-name conventions whose every name is a linear layer
inside attention (a path part containing `attn` or `attention`): `q_proj`+`v_proj`, `query`+`value`,
`query_proj`+`value_proj`, `q_lin`+`v_lin`, `q`+`v`, then the fused projections `qkv_proj`,
`query_key_value`, `c_attn`, `Wqkv`, `qkv` (a fused layer holds query, key and value together).
`attention` adapts every linear layer inside attention, `mlp` every linear layer of the repeated blocks
outside attention, `all-linear` every linear layer but the output head.

## Sliding windows

Mistral, Qwen2/3 (`use_sliding_window`), Gemma 2/3 and StarCoder2 attend to a window of recent tokens
in some or all layers. Training applies the window inside each packed example too; generation and
serving mix such rows with others in one batch (the cache keeps every column, the mask applies each
row's window). Attention kinds the decode loop cannot batch (chunked attention, linear/recurrent
layers, KV sharing) are refused when the model loads, with the reason.

## Coverage

"""


def merge_rows(results: list[Family], names: list[str]) -> list[Family]:
    """With --families, the other families' rows as docs/models.md has them (every family, in order)."""
    everything = list(CAUSAL_FAMILIES + ENCODER_FAMILIES)
    if set(names) == set(everything):
        return results
    documented = parse_table(DOC.read_text(encoding="utf-8"))
    fresh = {fam.name: fam for fam in results}
    out = []
    for name in everything:
        if name in fresh:
            out.append(fresh[name])
            continue
        row = documented[NAMES[name]]
        targets = "" if row["default targets"] == "-" else row["default targets"]
        out.append(Family(name, Path(), {c: row[c] for c in COLUMNS}, targets))
    return out


def render(families: list[Family]) -> str:
    return INTRO + table(families)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--no-serve", action="store_true", help="skip the serve column (not checked)")
    parser.add_argument("--print", action="store_true", help="print the table instead of writing docs/models.md")
    parser.add_argument("--workdir", default="/tmp/lorafit-coverage")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = [f for f in args.families.split(",") if f] or list(CAUSAL_FAMILIES + ENCODER_FAMILIES)
    results = []
    for name in names:
        started = time.perf_counter()
        results.append(check_family(name, Path(args.workdir) / name, serve=not args.no_serve))
        print(f"{name}: {results[-1].cells} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    if args.print:
        print(table(results))
    else:
        DOC.write_text(render(merge_rows(results, names)), encoding="utf-8")
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
