"""The mixed-adapter decode loop on sliding-window and hybrid (sliding + full) attention: rows of
different lengths and adapters, joining and leaving mid-decode, prompts + generations longer than the
tiny models' 8-token window, each row's greedy tokens equal to PEFT's single-adapter `generate` (fp32).
Attention kinds the loop cannot decode are refused when the model is loaded, in one line."""

import functools

import pytest
import torch
from families import build, config
from multi_fixtures import make_adapter
from peft import PeftModel
from tiny import tiny_tokenizer

from lorafit.adapters.attention_kinds import attention_layer_types, check_decodable
from lorafit.adapters.decode import DecodeBatch, Request
from lorafit.adapters.host import AdapterHost
from lorafit.errors import ModelError

torch.set_num_threads(1)

# family -> its layers' kinds: all sliding (Mistral, Starcoder2), or hybrid in either order.
SLIDING = {
    "mistral": ["sliding_attention"] * 2,
    "qwen2": ["full_attention", "sliding_attention"],
    "qwen3": ["full_attention", "sliding_attention"],
    "gemma2": ["sliding_attention", "full_attention"],
    "gemma3_text": ["sliding_attention", "full_attention"],
    "starcoder2": ["sliding_attention"] * 2,
}
NEW_TOKENS = 14


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 19, 11, 26, 6)]


def _generate(model, prompt):
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", list(SLIDING))
def test_sliding_window_rows_mixed_with_others_equal_peft_generate(family, tmp_path):
    assert attention_layer_types(config(family)) == SLIDING[family]
    family_build = functools.partial(build, family)
    make_adapter(family_build, tmp_path / "a", 4, ("all-linear",), seed=3)
    host = AdapterHost(family_build(), tiny_tokenizer(), causal=True)
    host.load_adapter("a", tmp_path / "a")
    prompts, slots = _prompts(), [0, 1, 1, 0, 1]  # 3-26 prompt tokens, + 14 new: past the window in most rows
    requests = [Request(p, s, NEW_TOKENS, key=i) for i, (p, s) in enumerate(zip(prompts, slots, strict=True))]
    batch = DecodeBatch(host.model, host.routing, [], 0)
    done = batch.add(requests[:2])
    for _ in range(4):
        done += batch.step()
    done += batch.add(requests[2:4])  # a longer and a shorter prompt than the batch's cache join
    for _ in range(3):
        done += batch.step()
    done += batch.remove([0])  # a row leaves early (a cancelled request)
    done += batch.add(requests[4:])
    while batch.rows:
        done += batch.step()
    got = {row.request.key: row.tokens for row in done}

    base, peft = build(family), PeftModel.from_pretrained(build(family), str(tmp_path / "a")).eval()
    expected = [_generate(peft if s else base, p) for p, s in zip(prompts, slots, strict=True)]
    assert got[0] == expected[0][: len(got[0])] and len(got[0]) < NEW_TOKENS  # left after 5 tokens
    assert [got[i] for i in range(1, 5)] == expected[1:]
    # The window matters: without it the long rows continue differently.
    unwindowed = build(family)
    unwindowed.config.sliding_window = 10_000
    assert any(_generate(unwindowed, prompts[i]) != expected[i] for i in (1, 3)), "window never mattered"


def test_prefix_sharing_is_off_for_sliding_windows():
    # A shared prefix leaves a hole in the rows' cache columns that a column-space window would misread.
    assert DecodeBatch(build("mistral"), None, [], 0).share_prefixes is False
    assert DecodeBatch(build("llama"), None, [], 0).share_prefixes is True


def test_chunked_attention_is_refused_when_the_model_loads(tmp_path):
    message = ("model type 'llama4_text' has chunked_attention layers; batched decoding (generate, serve) "
               "supports full_attention and sliding_attention layers only")
    with pytest.raises(ModelError) as e:
        check_decodable(config("llama4_text"))
    assert str(e.value) == message
    with pytest.raises(ModelError) as e:
        AdapterHost(build("llama4_text"), tiny_tokenizer(), causal=True)
    assert str(e.value) == message


def test_cli_generate_refuses_chunked_attention_before_any_request(tmp_path):
    from typer.testing import CliRunner

    from lorafit.cli import app

    model_dir = tmp_path / "l4"
    build("llama4_text").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    (tmp_path / "in.jsonl").write_text('{"prompt": "hello"}\n')
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "-i", str(tmp_path / "in.jsonl"),
                                      "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2, result.output
    assert "has chunked_attention layers; batched decoding" in result.output
    assert "unexpected" not in result.output and not (tmp_path / "out.jsonl").exists()
