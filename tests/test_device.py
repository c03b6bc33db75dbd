"""Where commands compute: `compute_device` (recipe `device`, $LORAFIT_DEVICE, auto), and the CUDA
path checked where a GPU exists (tests marked `cuda` skip elsewhere: CI has no GPU)."""

import pytest
import torch
from tiny import tiny_llama

from lorafit.errors import ModelError
from lorafit.models.device import compute_device, device_name

HAS_CUDA = torch.cuda.is_available()
def cuda(test):
    """Marked `cuda` (bench/gpu_check.sh runs `pytest -m cuda`) and skipped where torch sees no GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")(test))


def test_cpu_is_always_there_and_auto_takes_a_gpu_only_when_torch_sees_one(monkeypatch):
    monkeypatch.delenv("LORAFIT_DEVICE", raising=False)
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert compute_device(None).type == ("cuda" if HAS_CUDA else "cpu")
    assert device_name(torch.device("cpu")) == "cpu"


def test_the_environment_variable_chooses_when_the_caller_does_not(monkeypatch):
    monkeypatch.setenv("LORAFIT_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")
    assert compute_device("auto").type == ("cuda" if HAS_CUDA else "cpu")  # the caller's own choice wins
    monkeypatch.setenv("LORAFIT_DEVICE", "tpu")
    with pytest.raises(ModelError, match=r"^LORAFIT_DEVICE: 'tpu' is not a device; choose one of auto, cpu, cuda"):
        compute_device()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_line_not_a_silent_cpu_run(monkeypatch):
    monkeypatch.delenv("LORAFIT_DEVICE", raising=False)
    with pytest.raises(ModelError) as err:
        compute_device("cuda")
    message = str(err.value)
    assert message.startswith("device: 'cuda' asked for, but ") and "\n" not in message


def test_a_recipe_names_its_device_and_a_bad_one_is_refused(tmp_path):
    from lorafit.errors import RecipeError
    from lorafit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: x\ntask: e2e\ndevice: cpu\n")
    assert load_recipe(path).device == "cpu"
    path.write_text("model: x\ntask: e2e\ndevice: gpu\n")
    with pytest.raises(RecipeError, match="device"):
        load_recipe(path)


def test_seeded_sampling_is_done_on_the_cpu_so_a_seed_means_the_same_tokens_anywhere():
    from lorafit.adapters.decode import DecodeBatch, Request, sample_next

    def row(seed):
        request = Request(prompt_ids=[1, 2], max_new_tokens=1, temperature=0.8, top_p=0.9, seed=seed)
        return type("Row", (), {"request": request, "generator": DecodeBatch._generator(request)})()

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    tokens = sample_next(logits, [row(7), row(7), row(7)])
    assert tokens.device.type == "cpu"
    # The same seed on the same logits draws the same token, batched or alone.
    assert [int(sample_next(logits[i : i + 1], [row(7)])[0]) for i in range(3)] == tokens.tolist()


@cuda
def test_training_steps_on_the_gpu_follow_the_cpu_losses():
    """A few fp32 optimizer steps of a tiny Llama with LoRA on CPU and on CUDA from the same init and
    batches: the losses agree to 1e-4 (no dropout: the two devices draw different random numbers)."""
    from lorafit.lora import LoraSpec, add_lora

    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = tiny_llama()
        add_lora(model, LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj")))
        model.to(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)
        losses[device] = []
        for _ in range(4):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[device].append(loss.item())
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=1e-4)


@cuda
def test_mixed_adapter_decoding_on_the_gpu_gives_the_cpu_greedy_tokens(tmp_path):
    """The decode loop (caches, routing, sampling) on a CUDA model: the same greedy tokens as on CPU."""
    from multi_fixtures import host_for, llama_adapters

    from lorafit.adapters.decode import DecodeBatch, Request

    adapters = llama_adapters(tmp_path)
    tokens = {}
    for device in ("cpu", "cuda"):
        host = host_for(tiny_llama)
        host.model.to(device)
        for name, (directory, _) in adapters.items():
            host.load_adapter(name, directory)
        slots = [0, *(info["slot"] for info in host.adapters().values())]
        requests = [Request([1, 5, 9, 3, 7][: 2 + i % 4], slot=slots[i % len(slots)], max_new_tokens=6)
                    for i in range(8)]
        tokens[device] = [row.tokens for row in DecodeBatch(host.model, host.routing, [2], 0).run(requests)]
    assert tokens["cuda"] == tokens["cpu"]
