"""Merged model vs base model inference latency, in one process, for trained adapters.

    .venv/bin/python bench/merge_latency.py RUN_DIR [RUN_DIR ...]      # prints one JSON object

For each run directory (a trained lorafit run): load the base model, load the run's adapter on a
second copy, merge it into the weights and unload the LoRA wrappers (plain nn.Linear again), check the
merged model gives the adapter's outputs, then time both models in interleaved rounds (base, merged,
merged, base, ...) on the same inputs, so drift in machine load hits both alike:
- a causal LM: greedy generation of a fixed number of new tokens from E2E-style prompts;
- a classifier: a forward pass over a batch of sentences.
The ratio merged / base of the median times is the number to read: LoRA merged costs nothing at
inference, so it should be 1.0 within noise. Called by `bench/results.py` after the experiments.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MRS = [  # E2E meaning representations, formatted with the e2e task's prompt; the same text for both models
    "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]",
    "name[The Cambridge Blue], eatType[pub], food[English], priceRange[cheap], near[Café Brazil]",
    "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], area[riverside]",
    "name[Zizzi], eatType[pub], food[Fast food], customer rating[3 out of 5], familyFriendly[yes]",
]
SENTENCES = [  # SST-2-style sentences for the classifier forward
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish .",
    "an utterly charming and hilarious film that reminded me of the best of the genre",
    "it 's a bad sign when you 're rooting for the film to end .",
] * 8


def merged_copy(adapted):
    """The adapted model with LoRA merged into the weights and the wrappers removed."""
    from lorafit.lora import merge_lora, unload_lora

    merged = copy.deepcopy(adapted)
    merge_lora(merged, keep_original=False)
    unload_lora(merged)
    return merged


def measure(run_dir: Path, rounds: int, new_tokens: int) -> dict:
    import torch

    from lorafit.models import load_base
    from lorafit.models.loader import load_adapter
    from lorafit.tasks.e2e import format_prompt

    prompts = [format_prompt(mr) for mr in MRS]

    loaded = load_adapter(run_dir / "adapter")
    tok = loaded.tokenizer
    classifier = type(loaded.model).__name__.endswith("ForSequenceClassification")
    num_labels = loaded.model.config.num_labels if classifier else 0
    base, _ = load_base(loaded.base, num_labels)
    base.eval()
    merged = merged_copy(loaded.model).eval()
    # After unloading, the merged model must be the base architecture: no LoRA wrapper left.
    plain = not any("LoRA" in type(m).__name__ for m in merged.modules())
    if classifier:
        batch = tok(SENTENCES, return_tensors="pt", padding=True)
        with torch.no_grad():
            diff = (merged(**batch).logits - loaded.model(**batch).logits).abs().max().item()

        def run(model):
            with torch.no_grad():
                model(**batch)

        what = f"forward over {len(SENTENCES)} sentences (batch of {batch['input_ids'].shape[1]} tokens each)"
    else:
        batch = tok(prompts[0], return_tensors="pt")
        with torch.no_grad():
            diff = (merged(**batch).logits - loaded.model(**batch).logits).abs().max().item()

        def run(model):
            for prompt in prompts:
                ids = tok(prompt, return_tensors="pt")
                with torch.no_grad():
                    out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=tok.pad_token_id)
                assert out.shape[1] == ids["input_ids"].shape[1] + new_tokens

        what = f"greedy generation of {new_tokens} new tokens for each of {len(prompts)} E2E prompts"
    samples = benchlib.interleaved_samples({"base": lambda: run(base), "merged": lambda: run(merged)}, rounds)
    base_s, merged_s = statistics.median(samples["base"]), statistics.median(samples["merged"])
    paired = [m / b for b, m in zip(samples["base"], samples["merged"], strict=True)]
    return {
        "model": loaded.base.name, "what": what, "rounds": rounds, "plain_modules": plain,
        "max_abs_logit_diff_merged_vs_adapter": diff,
        "base_ms": 1e3 * base_s, "merged_ms": 1e3 * merged_s, "ratio": merged_s / base_s,
        "paired_ratio_min": min(paired), "paired_ratio_max": max(paired),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    if not runs:
        raise SystemExit("usage: merge_latency.py RUN_DIR [RUN_DIR ...]")
    print(json.dumps({str(r): measure(r, rounds=10, new_tokens=32) for r in runs}))


if __name__ == "__main__":
    main()
