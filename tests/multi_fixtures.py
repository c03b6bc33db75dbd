"""Adapters for the multi-adapter tests: tiny bases from configs, LoRA of several ranks and target sets
with non-zero B, saved in PEFT's format with lorafit's base identity (no network)."""

import json

import torch
from tiny import randomize_lora, tiny_bert, tiny_gpt2, tiny_llama, tiny_tokenizer

from lorafit.lora import LoraSpec, add_lora, save_adapter
from lorafit.models import model_identity

# name -> (rank, targets): ranks 1..16, different target sets (one adapter skips whole layer kinds).
LLAMA_ADAPTERS = {
    "r1": (1, ("q_proj", "v_proj")),
    "r4": (4, ("all-linear",)),
    "r8": (8, ("o_proj", "up_proj")),
    "r16": (16, ("k_proj", "down_proj", "gate_proj")),
}
GPT2_ADAPTERS = {"g2": (2, ("c_attn",)), "g8": (8, ("c_proj", "c_fc"))}
BERT_ADAPTERS = {"sst": (4, 2), "nli": (8, 3), "cola": (1, 2)}  # name -> (rank, num_labels)


def make_adapter(build, directory, rank, targets, seed, task_type="CAUSAL_LM", modules_to_save=(), alpha=None,
                 record_identity=True, **build_kwargs):
    """Train-looking adapter on `build()`: returns the adapted model (the per-adapter reference)."""
    model = build(**build_kwargs)
    spec = LoraSpec(rank=rank, alpha=alpha or 2.0 * rank, targets=targets, modules_to_save=tuple(modules_to_save))
    add_lora(model, spec)
    randomize_lora(model, seed=seed)
    if modules_to_save:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[0] in modules_to_save:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    metadata = {"lorafit_base_identity": json.dumps(model_identity(model), sort_keys=True)} if record_identity else {}
    save_adapter(model, directory, spec, base_model_name_or_path="tiny", task_type=task_type, metadata=metadata)
    return model.eval()


def llama_adapters(tmp_path):
    """{name: (dir, adapted reference model)} for LLAMA_ADAPTERS."""
    return {
        name: (str(tmp_path / name), make_adapter(tiny_llama, tmp_path / name, rank, targets, seed=10 + i))
        for i, (name, (rank, targets)) in enumerate(LLAMA_ADAPTERS.items())
    }


def gpt2_adapters(tmp_path):
    return {
        name: (str(tmp_path / name), make_adapter(tiny_gpt2, tmp_path / name, rank, targets, seed=20 + i))
        for i, (name, (rank, targets)) in enumerate(GPT2_ADAPTERS.items())
    }


def bert_adapters(tmp_path):
    out = {}
    for i, (name, (rank, labels)) in enumerate(BERT_ADAPTERS.items()):
        model = make_adapter(tiny_bert, tmp_path / name, rank, ("query", "value", "dense"), seed=30 + i,
                             task_type="SEQ_CLS", modules_to_save=("classifier",), num_labels=labels)
        out[name] = (str(tmp_path / name), model)
    return out


def host_for(build, causal=True, **kwargs):
    from lorafit.adapters.host import AdapterHost

    return AdapterHost(build(), tiny_tokenizer(), causal=causal, **kwargs)
