"""Many adapters on a bf16 base (`--precision bf16`, or auto on CPUs with native bf16 matmuls): weights
cast once, adapters and rotary positions kept in fp32, logits within bf16 rounding of the fp32 host,
and the kernel choice of `kernel="auto"`."""

import json

import pytest
import torch
from multi_fixtures import host_for, llama_adapters
from tiny import tiny_llama, tiny_tokenizer, token_batch
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.errors import ModelError
from lorafit.fast.precision import resolve_precision
from lorafit.lora.multi import RoutePlan, _groups, lora_delta_multi

torch.set_num_threads(1)
ROWS = ["r1", "r4", None, "r8", "r16", "r1", None, "r16"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return llama_adapters(tmp_path_factory.mktemp("llama"))


def loaded(llama, **kwargs):
    host = host_for(tiny_llama, **kwargs)
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    return host


def test_bf16_host_keeps_adapters_and_positions_in_fp32_and_stays_close_to_fp32(llama):
    fp32, bf16 = loaded(llama), loaded(llama, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {layer.lora_A.dtype for layer in bf16._layers.values()} == {torch.float32}
    assert {layer.lora_B.dtype for layer in bf16._layers.values()} == {torch.float32}
    inv_freq = [b for name, b in bf16.model.named_buffers() if name.endswith("inv_freq")]
    assert inv_freq and {b.dtype for b in inv_freq} == {torch.float32}
    ids = token_batch(seed=3, batch=len(ROWS), length=10)
    mask = torch.ones_like(ids)
    want = fp32.logits(ids, mask, ROWS)
    got = bf16.logits(ids, mask, ROWS)
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: a few roundings per layer stay well inside 5% of the logit scale,
    # while a row on the wrong adapter (or none) would be off by far more.
    err = (got.float() - want).abs().amax(dim=(1, 2))
    assert float(err.max()) < 0.05 * float(want.abs().max()), err
    wrong = (fp32.logits(ids, mask, ["r16"] * len(ROWS)) - want).abs().amax(dim=(1, 2))
    assert all(float(w) > 5 * float(e) for w, e, name in zip(wrong, err, ROWS, strict=True) if name != "r16")
    # Greedy generation runs in bf16 too, each row on its own adapter.
    outs = bf16.generate(["hello", "a b c"], adapter=["r4", None], max_new_tokens=4)
    assert [len(o.tokens) for o in outs] == [4, 4]


def test_precision_values():
    with pytest.raises(ModelError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        host_for(tiny_llama, precision="fp16")
    assert host_for(tiny_llama, precision="auto").precision == resolve_precision("auto", torch.device("cpu"))
    model = tiny_llama().to(torch.bfloat16)
    assert host_for(lambda: model).precision == "bf16"  # None: the model is left as it comes
    assert host_for(lambda: model, precision="fp32").precision == "fp32"


def test_auto_kernel_loops_over_one_adapter_and_groups_several():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8, 6), torch.randn(4, 5, 8)
    a[0], b[0] = 0, 0  # slot 0 is the base: all zeros, as in MultiLoRALinear
    ranks = [0, 8, 8, 8]
    for row_slots, tokens in (([1] * 12, 1), ([1, 0, 1, 0], 3), ([1, 2, 3] * 4, 1), ([1, 2, 3, 0, 2, 1], 1),
                              ([3, 1, 1, 1, 1, 1], 5)):
        x = torch.randn(len(row_slots), tokens, 6)
        slots = torch.tensor(row_slots)
        plan = RoutePlan(len(row_slots), slots, _groups(slots))
        outs = {k: lora_delta_multi(x, a, b, ranks, plan, k) for k in ("loop", "grouped", "auto")}
        assert torch.equal(outs["auto"], outs["loop" if len(plan.groups) == 1 else "grouped"])
        for kernel in ("grouped",):  # both kernels: the same sum, base rows exactly zero
            torch.testing.assert_close(outs[kernel], outs["loop"], atol=1e-5, rtol=0)
            assert not outs[kernel][slots == 0].any()


def test_generate_cli_reports_bf16(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    adapters = llama_adapters(tmp_path)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": "hello", "adapter": "r4"}) + "\n")
    done = CliRunner().invoke(app, ["generate", "-m", str(model_dir), "-a", f"r4={adapters['r4'][0]}", "-i", str(requests),
                                    "-o", str(tmp_path / "out.jsonl"), "--max-new-tokens", "3", "--precision", "bf16",
                                    "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["precision"] == "bf16"
    assert json.loads((tmp_path / "out.jsonl").read_text())["completion_tokens"] == 3
