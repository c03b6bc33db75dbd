"""oneDNN-packed frozen weights (lorafit/fast/packed.py, lorafit/adapters/packing.py): the same
products as F.linear (fp32 to the last bits, bf16 equal), plain weights dropped unless tied, a GPT-2
Conv1D unpacked back to a Conv1D, and `lorafit generate --no-pack-weights` giving the same tokens.
The mixed-adapter exactness tests run packed too (tests/test_multi_adapter.py, pack=True)."""

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import save_tiny_model, tiny_gpt2, tiny_llama, token_batch
from typer.testing import CliRunner

from lorafit.adapters.packing import pack_linears, unpack_linears
from lorafit.cli import app
from lorafit.fast.packed import PackedLinear, can_pack

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (3, 4, 24), (0, 24), (70, 24)])
def test_packed_linear_gives_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=g)
    b = torch.nn.Parameter(torch.randn(40, generator=g)) if bias else None
    x = torch.randn(*shape, generator=g)
    layer = PackedLinear(weight, b)
    got, want = layer(x), F.linear(x, weight, b)
    assert got.shape == want.shape == (*shape[:-1], 40)
    # Another order of summation: equal to fp32 rounding of these ~5-sized outputs, no more.
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    assert [n for n, _ in layer.named_parameters()] == (["bias"] if bias else [])
    plain = layer.unpacked()
    assert isinstance(plain, torch.nn.Linear) and torch.equal(plain.weight, weight)
    assert plain.bias is b and not plain.weight.requires_grad


def test_bf16_packed_linear_equals_f_linear_and_refuses_another_dtype():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 16, generator=g).bfloat16()
    x = torch.randn(6, 16, generator=g).bfloat16()
    layer = PackedLinear(weight, None)
    torch.testing.assert_close(layer(x), F.linear(x, weight), atol=0, rtol=0)  # oneDNN does bf16 either way
    with pytest.raises(RuntimeError, match="input is torch.float32, weight is torch.bfloat16"):
        layer(x.float())
    assert not can_pack(torch.zeros(4, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="cannot pack a torch.float64"):
        PackedLinear(torch.zeros(4, 4, dtype=torch.float64), None)


def test_pack_linears_swaps_every_linear_and_frees_untied_weights():
    model, reference = tiny_llama(), tiny_llama()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    before = sum(p.numel() for p in model.parameters())
    packed = pack_linears(model)
    assert packed == len(linears) == 15  # q, k, v, o, gate, up, down x 2 layers + the LM head (untied)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    # The plain weights are gone from the model (only embedding and norms stay Parameters).
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, PackedLinear))
    assert sum(p.numel() for p in model.parameters()) == before - weights
    ids = token_batch(seed=2, batch=3, length=7)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_gpt2_tied_head_and_conv1d_round_trip():
    model, reference = tiny_gpt2(), tiny_gpt2()
    before = sum(p.numel() for p in model.parameters())
    assert pack_linears(model) == 2 * 4 + 1  # c_attn, c_proj, c_fc, mlp c_proj x 2 layers + lm_head
    # The LM head shares the embedding matrix: that Parameter stays (wte needs it); the Conv1D weights go.
    assert isinstance(model.lm_head, PackedLinear)
    assert torch.equal(model.transformer.wte.weight, reference.transformer.wte.weight)
    conv_weights = sum(m.in_features * m.out_features for n, m in model.named_modules()
                       if isinstance(m, PackedLinear) and n != "lm_head")
    assert sum(p.numel() for p in model.parameters()) == before - conv_weights
    ids = token_batch(seed=3, batch=2, length=6)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=0)
    attn = unpack_linears(model.transformer.h[0].attn)
    assert type(attn.c_attn).__name__ == "Conv1D"
    assert torch.equal(attn.c_attn.weight, reference.transformer.h[0].attn.c_attn.weight)  # (d_in, d_out) again
    assert torch.equal(attn.c_attn.bias, reference.transformer.h[0].attn.c_attn.bias)


def test_generate_cli_packed_and_plain_give_the_same_tokens(tmp_path):
    base = save_tiny_model(tmp_path / "llama", "llama")
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("hello", "a b c d", "x")))
    summaries, outputs = [], []
    for flag in ("--pack-weights", "--no-pack-weights"):
        out = tmp_path / f"{flag}.jsonl"
        result = CliRunner().invoke(app, ["generate", "--model", str(base), "--input", str(requests), "--output",
                                          str(out), "--max-new-tokens", "6", "--precision", "fp32", "--json", flag])
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(result.stdout.strip().splitlines()[-1]))
        outputs.append([json.loads(line)["completion"] for line in out.read_text().splitlines()])
    assert summaries[0]["packed_layers"] == 15 and summaries[1]["packed_layers"] == 0
    assert outputs[0] == outputs[1]


def test_a_packing_host_keeps_no_plain_weight_alive():
    import gc
    import weakref

    from multi_fixtures import host_for

    model = tiny_llama()
    # The base's checks (BaseShape) must not hold the modules: they would keep every plain weight.
    plain = [weakref.ref(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    host = host_for(lambda: model, pack_weights=True)  # the host's model is this very object
    gc.collect()
    assert host.packed_layers == len(plain) and all(ref() is None for ref in plain)
