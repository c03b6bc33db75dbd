"""`lorafit serve` pieces in-process (no server start): the safe defaults and a full queue over HTTP with
the openai client on a TestClient, stop strings in the text stream, A/B route picks, option checks."""

import pytest
import torch

openai = pytest.importorskip("openai", reason="pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="pip install -e '.[serve]'")

from multi_fixtures import host_for  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lorafit.cli import app as cli  # noqa: E402
from lorafit.serve.app import ServerConfig, build_app  # noqa: E402
from lorafit.serve.engine import Engine, Sampling  # noqa: E402
from lorafit.serve.protocol import APIError  # noqa: E402
from lorafit.serve.routing import Route, RouteError, parse_route  # noqa: E402
from lorafit.serve.security import check_api_key  # noqa: E402
from lorafit.serve.text import TextStream  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def idle():
    """An app over an engine whose thread never starts: what is queued stays queued."""
    engine = Engine(host_for(tiny_llama), max_batch=1, max_queue=1)
    with TestClient(build_app(engine, ServerConfig("tiny"))) as http:
        yield engine, openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)


def test_defaults_refuse_adapter_loading_and_a_full_queue_is_503(idle, tmp_path):
    engine, client = idle
    with pytest.raises(openai.PermissionDeniedError, match="--allow-adapter-loading"):
        client.post("/load_lora_adapter", body={"lora_name": "a", "lora_path": str(tmp_path)}, cast_to=object)
    with pytest.raises(openai.PermissionDeniedError):
        client.post("/unload_lora_adapter", body={"lora_name": "a"}, cast_to=object)
    engine.submit([1, 5], None, Sampling(2), [].append)  # the one place in the queue
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="tiny", prompt="hello", max_tokens=2)
    assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        client.completions.create(model="tiny", prompt=["a", "b"])


def test_api_key_check():
    check_api_key(None, None)
    check_api_key("k", "Bearer k")
    for header in (None, "", "Bearer", "Basic k", "Bearer wrong"):
        with pytest.raises(APIError) as e:
            check_api_key("k", header)
        assert e.value.status == 401


def test_text_stream_holds_back_what_could_start_a_stop_string():
    tok = tiny_tokenizer()
    stream = TextStream(tok, ["END", "!"])
    out = [stream.push(tok(c, add_special_tokens=False)["input_ids"]) for c in "abcEN"]
    assert "".join(out) == "abc" and not stream.stopped  # "EN" might start "END"...
    assert stream.push(tok("x", add_special_tokens=False)["input_ids"]) == "E"  # ... "ENx" does not
    assert stream.push(tok("yEND tail", add_special_tokens=False)["input_ids"]) == "Nxy" and stream.stopped
    assert stream.flush() == "" and stream.text == "abcENxy"
    plain = TextStream(tok, [])
    assert plain.push([1, 40, 41]) + plain.flush() == tok.decode([40, 41])


def test_routes_parse_pick_and_reweight():
    assert parse_route("ab=v1:90,v2:10") == ("ab", {"v1": 90.0, "v2": 10.0})
    for bad in ("ab", "ab=", "ab=v1", "ab=v1:x", "ab=v1:-1", "ab=v1:0"):
        with pytest.raises(RouteError):
            parse_route(bad)
    route = Route("ab", {"v1": 90, "v2": 10}, seed=3)
    picks = [route.pick() for _ in range(400)]
    again = Route("ab", {"v1": 90, "v2": 10}, seed=3)
    assert 300 < picks.count("v1") < 390 and picks == [again.pick() for _ in range(400)]  # seeded
    assert len({route.pick("alice") for _ in range(20)}) == 1
    route.reweight({"v1": 0, "v2": 1})
    assert {route.pick(f"u{i}") for i in range(20)} == {"v2"}


@pytest.mark.parametrize("args, message", [
    (["--route", "ab=x:1"], "'x' is not an --adapter name or the base"),
    (["--route", "nonsense"], "expected NAME=ADAPTER:WEIGHT"),
    (["--allow-adapter-loading"], "needs --adapter-root"),
    (["--adapter", "a"], "expected NAME=DIR"),
    (["--adapter", "a=/no/such/dir"], "no such directory"),
])
def test_bad_options_fail_before_loading(args, message):
    result = CliRunner().invoke(cli, ["serve", "--model", "no-such-model/", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_help_has_examples():
    done = CliRunner().invoke(cli, ["serve", "--help"])
    lines = done.output.splitlines()
    start = lines.index("  Examples:")
    examples = lines[start + 1 : lines.index("", start)]
    assert len(examples) == 3 and all(line.startswith("    lorafit serve ") for line in examples)
    assert "--allow-adapter-loading" in done.output and "--route" in done.output
