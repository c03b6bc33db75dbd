"""What an operator bounds and a client cannot get around, in-process (no server start): the key checked
before the body is read, body size, request timeout, --max-model-len, --max-adapters, adapter names,
route re-weighting permission, and incremental detokenising (same text as a full decode, O(n) work)."""

import asyncio
import json
import random

import pytest
import torch

openai = pytest.importorskip("openai", reason="pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="pip install -e '.[serve]'")

from multi_fixtures import host_for, llama_adapters  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lorafit.cli import app as cli  # noqa: E402
from lorafit.serve.app import ServerConfig, build_app  # noqa: E402
from lorafit.serve.engine import Engine  # noqa: E402
from lorafit.serve.gate import Gate  # noqa: E402
from lorafit.serve.protocol import APIError, ChatRequest, CompletionRequest  # noqa: E402
from lorafit.serve.routing import Route  # noqa: E402
from lorafit.serve.sampling import Limits, to_sampling  # noqa: E402
from lorafit.serve.security import name_problem  # noqa: E402
from lorafit.serve.text import TextStream  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    llama_adapters(root)
    return root


def client_for(engine, **config):
    http = TestClient(build_app(engine, ServerConfig("tiny", **config)))
    return http, openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http, max_retries=0)


# ------------------------------------------------------------------------------------------------ the gate

def test_a_request_without_the_key_is_refused_before_its_body_is_read():
    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        raise AssertionError("the body must not be read")

    sent = []

    async def send(message):
        sent.append(message)

    gate = Gate(app, api_key="k", max_request_bytes=10)
    scope = {"type": "http", "path": "/v1/completions", "headers": [(b"content-length", b"5")]}
    asyncio.run(gate(scope, receive, send))
    assert sent[0]["status"] == 401 and json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"
    sent.clear()  # the right key but a declared length over the limit: 413, still unread
    scope["headers"] += [(b"authorization", b"Bearer k"), (b"content-length", b"11")]
    asyncio.run(gate(scope, receive, send))
    assert sent[0]["status"] == 413


# ------------------------------------------------------------------------------------------------ limits

def test_max_model_len_bounds_prompt_plus_max_tokens_and_chat_default():
    limits = Limits(max_model_len=20, vocab_size=128)
    ids = list(range(1, 13))  # 12 prompt tokens
    assert to_sampling(CompletionRequest(model="m", prompt="x", max_tokens=8), ids, limits, chat=False).max_new_tokens == 8
    with pytest.raises(APIError) as e:
        to_sampling(CompletionRequest(model="m", prompt="x", max_tokens=9), ids, limits, chat=False)
    assert e.value.param == "max_tokens" and e.value.code == "context_length_exceeded"
    assert "maximum context length is 20 tokens" in e.value.message and "21 tokens (12 in the prompt, 9" in e.value.message
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert to_sampling(chat, ids, limits, chat=True).max_new_tokens == 8  # what is left of max_model_len
    with pytest.raises(APIError):
        to_sampling(chat, list(range(1, 21)), limits, chat=True)  # no room left at all
    assert to_sampling(CompletionRequest(model="m", prompt="x", max_tokens=4, temperature=1e-6), ids, limits, chat=False).temperature == 0


def test_server_limits_over_http(adapters):
    host = host_for(tiny_llama)
    engine = Engine(host, max_adapters=2)  # never started: what is queued stays queued
    http, client = client_for(engine, max_model_len=32, request_timeout=0.3, allow_adapter_loading=True,
                              adapter_root=adapters, routes={"ab": Route("ab", {"tiny": 1})})
    with http:
        with pytest.raises(openai.BadRequestError, match="maximum context length is 32"):
            client.completions.create(model="tiny", prompt="x" * 30, max_tokens=4)
        assert {m.id: m.model_extra["max_model_len"] for m in client.models.list().data}["tiny"] == 32
        # Nothing decodes (the engine is idle): the request waits, then times out, cancelled.
        with pytest.raises(openai.APIStatusError) as e:
            client.completions.create(model="tiny", prompt="hello", max_tokens=2)
        assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
        stream = client.completions.create(model="tiny", prompt="hello", max_tokens=2, stream=True)
        with pytest.raises(openai.APIError, match="--request-timeout"):
            list(stream)
        assert engine.stats()["waiting"] == 2 and all(job.cancelled for job in engine._waiting)
        # Names: a safe charset and length, checked before any path.
        for bad in ("../x", "a/b", ".hidden", "x" * 65, "sp ace"):
            with pytest.raises(openai.BadRequestError) as e:
                client.post("/load_lora_adapter", body={"lora_name": bad, "lora_path": "r1"}, cast_to=object)
            assert e.value.body["param"] == "lora_name" and e.value.body["code"] == "invalid_name"
    # --max-adapters 2: the third load is refused at once, and allowed again after an unload.
    engine.start()
    try:
        with http:
            for name in ("r1", "r4"):
                client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": name}, cast_to=object)
            with pytest.raises(openai.BadRequestError) as e:
                client.post("/load_lora_adapter", body={"lora_name": "r8", "lora_path": "r8"}, cast_to=object)
            assert e.value.body["code"] == "max_adapters_reached" and "--max-adapters" in e.value.message
            client.post("/unload_lora_adapter", body={"lora_name": "r1"}, cast_to=object)
            client.post("/load_lora_adapter", body={"lora_name": "r8", "lora_path": "r8"}, cast_to=object)
            assert engine.adapters() == ["r4", "r8"]
    finally:
        engine.stop()


def test_reweighting_a_route_needs_the_adapter_admin_permission():
    engine = Engine(host_for(tiny_llama))
    route = Route("ab", {"tiny": 1})
    http, client = client_for(engine, routes={"ab": route})
    with http:
        with pytest.raises(openai.PermissionDeniedError, match="--allow-adapter-loading"):
            client.post("/routes/ab", body={"weights": {"tiny": 2}}, cast_to=object)
        assert client.get("/routes", cast_to=object)["data"] == [{"name": "ab", "weights": {"tiny": 1}}]
    assert route.weights == {"tiny": 1}


@pytest.mark.parametrize("name, ok", [("sql", True), ("e2e-v1.2_b", True), ("A" * 64, True), ("../x", False),
                                      ("..", False), ("-x", False), ("a" * 65, False), ("", False), ("é", False)])
def test_adapter_names(name, ok):
    assert (name_problem(name) is None) == ok


@pytest.mark.parametrize("args, message", [
    (["--adapter", "../x=/tmp"], "is not a valid name"),
    (["--route", "a/b=x:1"], "is not a valid name"),
    (["--max-adapters", "1", "--adapter", "a=/tmp", "--adapter", "b=/tmp"], "more than --max-adapters 1"),
])
def test_bad_limits_fail_before_loading(args, message):
    result = CliRunner().invoke(cli, ["serve", "--model", "no-such-model/", *args])
    assert result.exit_code == 2 and message in result.output, result.output


# ------------------------------------------------------------------------------------------------ text

class CountingTokenizer:
    """A tokenizer that records how many tokens each decode call gets."""

    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def decode(self, ids, **kwargs):
        self.sizes.append(len(ids))
        return self.tok.decode(ids, **kwargs)


def byte_level_tokenizer():
    """A byte-level BPE (GPT-2 style: multi-byte characters span tokens), trained here on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat", "naïve café déjà vu", "日本語のテキスト", "emoji 🙂 and ümlauts"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=["<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.mark.parametrize("make", [tiny_tokenizer, byte_level_tokenizer], ids=["chars", "byte-level"])
def test_incremental_text_equals_a_full_decode_with_bounded_work(make):
    tok = make()
    rng = random.Random(0)
    text = "the naïve cat 🙂 sat on 日本語 café mat " * 30
    ids = tok(text, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tok)
    stream = TextStream(counting, [])
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 3)
        out.append(stream.push(ids[i : i + n]))
        i += n
    out.append(stream.flush())
    assert "".join(out) == tok.decode(ids, skip_special_tokens=True) == stream.text
    assert stream.tokens == ids
    assert max(counting.sizes) <= 8  # each decode sees a few tokens, never the whole (O(n) in all)


def test_stop_string_ends_the_tokens_too():
    tok = tiny_tokenizer()
    stream = TextStream(tok, ["END"])
    ids = tok("abcENDxyz", add_special_tokens=False)["input_ids"]
    assert stream.push(ids) == "abc" and stream.stopped
    assert stream.tokens == ids[:6] and stream.flush() == ""  # up to the D of END, nothing after
