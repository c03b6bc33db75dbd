"""DoRA and rank-pattern adapters mixed with plain LoRA adapters in one batch on one base (AdapterHost,
`lorafit generate`): each row equals its adapter alone (the plain lorafit model, itself PEFT-exact in
test_lora_variants.py), logits and greedy tokens, fp32, packed weights or not, every kernel."""

import json

import pytest
import torch
from multi_fixtures import host_for, make_adapter
from tiny import randomize_lora, tiny_gpt2, tiny_llama, token_batch

from lorafit.errors import AdapterError
from lorafit.lora import LoraSpec, add_lora, save_adapter
from lorafit.models import model_identity

torch.set_num_threads(1)
TOL = 1e-5


def variant_adapter(build, directory, spec, seed):
    """A train-looking adapter by `spec` (random A, B; DoRA magnitudes off their initial norms), saved."""
    model = build()
    add_lora(model, spec)
    randomize_lora(model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_magnitude_vector"):
                param.mul_(1 + 0.3 * torch.rand(param.shape, generator=g))
    metadata = {"lorafit_base_identity": json.dumps(model_identity(model), sort_keys=True)}
    save_adapter(model, directory, spec, base_model_name_or_path="tiny", task_type="CAUSAL_LM", metadata=metadata)
    return str(directory), model.eval()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {
        "plain": (str(root / "plain"), make_adapter(tiny_llama, root / "plain", 4, ("q_proj", "v_proj", "up_proj"), seed=1)),
        "dora": variant_adapter(tiny_llama, root / "dora", LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj", "o_proj"),
                                                                    variant="dora"), seed=2),
        "pattern": variant_adapter(tiny_llama, root / "pattern", LoraSpec(
            rank=2, alpha=4, targets=("all-linear",), rank_pattern={r"layers\.1\..*": 8, "down_proj": 1},
            alpha_pattern={"v_proj": 12.0}), seed=3),
        "dora-pattern": variant_adapter(tiny_llama, root / "dora-pattern", LoraSpec(
            rank=4, alpha=8, targets=("q_proj", "k_proj", "gate_proj"), variant="dora", rank_pattern={"k_proj": 16},
            rslora=True), seed=4),
    }


ROWS = ["dora", "plain", None, "pattern", "dora-pattern", "dora", "plain", "pattern", None, "dora-pattern"]


def padded_batch(rows, seed=3):
    ids = token_batch(seed=seed, batch=len(rows), length=10)
    mask = torch.ones_like(ids)
    for i in range(len(rows)):
        ids[i, 10 - (i % 4) :], mask[i, 10 - (i % 4) :] = 0, 0
    return ids, mask


@pytest.mark.parametrize(("kernel", "pack"), [("auto", False), ("auto", True), ("loop", False),
                                              ("grouped", True)])
def test_mixed_batch_of_dora_pattern_and_plain_rows_equals_each_adapter_alone(llama, kernel, pack):
    host = host_for(tiny_llama, kernel=kernel, pack_weights=pack)
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    ids, mask = padded_batch(ROWS)
    mixed = host.logits(ids, mask, ROWS)
    base = tiny_llama()
    for i, name in enumerate(ROWS):
        alone = (llama[name][1] if name else base)(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        real = mask[i].bool()
        torch.testing.assert_close(mixed[i][real], alone[real], atol=TOL, rtol=0, msg=f"row {i} ({name})")


def test_mixed_greedy_generation_with_dora_rows_equals_each_adapter_alone(llama):
    host = host_for(tiny_llama, pack_weights=True)
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    prompts = ["hello", "a b c", "the longest prompt of all", "x", "LoRA", "multi adapter", "zz"]
    rows = ["dora", None, "pattern", "plain", "dora-pattern", "dora", "pattern"]
    got = host.generate(prompts, adapter=rows, max_new_tokens=10)
    base = tiny_llama()
    for prompt, name, gen in zip(prompts, rows, got, strict=True):
        ids = host.tokenizer(prompt, return_tensors="pt")["input_ids"]
        model = llama[name][1] if name else base
        alone = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=2)
        assert gen.tokens == alone[0, ids.shape[1] :].tolist(), (prompt, name)


def test_unloading_a_dora_adapter_leaves_plain_rows_and_frees_its_rescaling(llama):
    host = host_for(tiny_llama)
    for name in ("dora", "plain"):
        host.load_adapter(name, llama[name][0])
    host.unload_adapter("dora")
    assert all(not layer.dora_slots and not layer.dora_scale.any() for layer in host._layers.values())
    host.load_adapter("dora-pattern", llama["dora-pattern"][0])  # takes the freed slot
    rows = ["plain", "dora-pattern", None]
    ids, mask = padded_batch(rows, seed=5)
    mixed = host.logits(ids, mask, rows)
    for i, name in enumerate(rows):
        alone = (llama[name][1] if name else tiny_llama())(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        torch.testing.assert_close(mixed[i][mask[i].bool()], alone[mask[i].bool()], atol=TOL, rtol=0)


def test_gpt2_conv1d_dora_rows_mixed_with_plain_rows(tmp_path):
    adapters = {
        "plain": (str(tmp_path / "plain"), make_adapter(tiny_gpt2, tmp_path / "plain", 2, ("c_attn",), seed=5)),
        "dora": variant_adapter(tiny_gpt2, tmp_path / "dora", LoraSpec(rank=4, alpha=8, targets=("c_attn", "c_fc"),
                                                                       variant="dora", rank_pattern={"c_fc": 2}), seed=6),
    }
    host = host_for(tiny_gpt2, pack_weights=True)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    rows = ["dora", "plain", None, "dora"]
    ids, mask = padded_batch(rows, seed=6)
    mixed = host.logits(ids, mask, rows)
    for i, name in enumerate(rows):
        alone = (adapters[name][1] if name else tiny_gpt2())(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        torch.testing.assert_close(mixed[i][mask[i].bool()], alone[mask[i].bool()], atol=TOL, rtol=0)


def test_host_refuses_unconverted_pissa_and_a_dora_adapter_without_magnitudes(llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    peft_model.save_pretrained(str(tmp_path / "pissa"))
    host = host_for(tiny_llama)
    with pytest.raises(AdapterError, match=r"init_lora_weights='pissa' \(unconverted\) needs its own residual base"):
        host.load_adapter("p", tmp_path / "pissa")
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(llama["dora"][0], tmp_path / "broken")
    weights = tmp_path / "broken" / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if "layers.0.self_attn.q_proj.lora_magnitude" not in k}
    save_file(tensors, str(weights))
    with pytest.raises(AdapterError, match="model.layers.0.self_attn.q_proj has no lora_magnitude_vector"):
        host.load_adapter("b", tmp_path / "broken")
    assert host.adapters() == {}


def test_lorafit_generate_cli_mixes_dora_pattern_and_plain_rows(llama, model_dir, tmp_path):
    """`lorafit generate` (fp32): one requests file, rows of every kind; greedy rows equal each adapter alone."""
    from cli_runs import run_cli
    from tiny import tiny_tokenizer

    rows = [("dora", "name[Ginger]"), ("plain", "hello"), ("pattern", "x y z"), ("dora-pattern", "select"), (None, "q")]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": p, "adapter": a}) + "\n" for a, p in rows))
    args = ["generate", "--model", model_dir, "-i", requests, "-o", tmp_path / "out.jsonl", "--max-new-tokens", "8",
            "--precision", "fp32"]
    for name in ("dora", "plain", "pattern", "dora-pattern"):
        args += ["--adapter", f"{name}={llama[name][0]}"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    tok = tiny_tokenizer()
    for (name, prompt), got in zip(rows, results, strict=True):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        model = llama[name][1] if name else tiny_llama()
        alone = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=2)
        assert got["adapter"] == name
        assert got["completion"] == tok.decode(alone[0, ids.shape[1] :], skip_special_tokens=True), (name, prompt)
