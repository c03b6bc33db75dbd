"""The recipe schema: frozen dataclasses, the one place every key's type, default, range and meaning live.

`lorafit/recipe.py` loads and validates YAML against these classes; `lorafit/recipe_docs.py` renders
them as docs/recipes.md. Field metadata: `help` (one line for the docs) and checks `gt`, `ge`, `lt`,
`nonempty`, `check` (a function returning a problem string or None).
"""

import re
from dataclasses import dataclass, field
from typing import Any, Literal


def _opt(default: Any, help: str, **checks: Any) -> Any:
    """A field with its one-line meaning (docs/recipes.md) and range checks: gt, ge, lt, nonempty."""
    return field(default=default, metadata={"help": help, **checks})


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        return f"{_show(pattern)} is not a valid regular expression: {e}"
    return None


def _init_problem(init: str) -> str | None:
    from lorafit.lora.inits import init_problem  # torch-free; imported late so the schema stays light

    return init_problem(init)


def _pattern_problem(pattern: dict) -> str | None:
    """rank_pattern / alpha_pattern: each key a valid regex (PEFT matches it against module names), each value > 0."""
    for key, value in pattern.items():
        problem = _regex_problem(key)
        if problem:
            return f"key {problem}"
        if not value > 0:
            return f"[{key!r}] must be > 0, got {_show(value)}"
    return None


def _mapping(help: str, **checks: Any) -> Any:
    """A mapping-valued field (default empty), with its meaning and checks."""
    return field(default_factory=dict, metadata={"help": help, **checks})


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """`lora:` which layers get low-rank adapters, and how they are shaped and initialised."""

    rank: int = _opt(8, "rank r of the update B @ A added to each target weight", gt=0)
    alpha: float = _opt(16.0, "scaling numerator: the update is multiplied by alpha / rank", gt=0)
    dropout: float = _opt(0.0, "dropout on the LoRA branch's input, in [0, 1)", ge=0, lt=1)
    targets: tuple[str, ...] = _opt(
        ("default",), "module-name suffixes to adapt, or one keyword: default (the attention's query and value "
        "projections, docs/models.md), attention, mlp or all-linear"
    )
    targets_regex: str | None = _opt(
        None, "full-match regex on module names; when set, used instead of targets", check=_regex_problem
    )
    rslora: bool = _opt(False, "rank-stabilised scaling alpha / sqrt(rank) instead of alpha / rank")
    init: str = _opt(
        "kaiming", "kaiming, gaussian: A random, B zero; pissa, pissa_niter_K (randomised SVD, K iterations), olora: "
        "A and B from W's SVD / QR, W replaced by the residual while training, the saved adapter converted to apply "
        "to the original W (rank 2 x rank); docs/adapters.md", check=_init_problem,
    )
    variant: Literal["lora", "dora"] = _opt(
        "lora", "lora; dora: DoRA, a trainable magnitude per output feature rescales each row of W + s B A "
        "(PEFT's use_dora)"
    )
    rank_pattern: dict[str, int] = _mapping(
        "per-module rank: {regex: rank}, the first key matching a dotted suffix of the module name wins "
        "(PEFT's rank_pattern); other modules keep rank", check=_pattern_problem,
    )
    alpha_pattern: dict[str, float] = _mapping(
        "per-module alpha, matched like rank_pattern (PEFT's alpha_pattern)", check=_pattern_problem
    )
    bias: Literal["none", "all", "lora_only"] = _opt("none", "which biases are trained: none, all, or those of adapted layers")
    modules_to_save: tuple[str, ...] = _opt(
        (), "extra modules trained in full (a classification head is added automatically)"
    )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """`data:` what `task: text` reads (data.source or *_file) and how (format, fields); lengths, subsets, cache: every task."""

    train_file: str | None = _opt(None, "training file (jsonl or csv) for task: text")
    valid_file: str | None = _opt(None, "validation file for task: text")
    test_file: str | None = _opt(None, "test file for task: text")
    prompt_template: str | None = _opt(None, "prompt filled in from each example's fields (task: text, generation)")
    completion_field: str | None = _opt(None, "field holding the completion to learn (generation)")
    text_field: str | None = _opt(None, "field holding the text to classify")
    text_pair_field: str | None = _opt(None, "field holding the second text of a pair (classification)")
    label_field: str | None = _opt(None, "field holding the label (classification)")
    num_labels: int | None = _opt(None, "number of classes (task: text, classification); null: from the data", gt=0)
    max_length: int = _opt(512, "tokens per example; longer prompts are cut from the left, the completion kept", gt=0)
    max_train_examples: int | None = _opt(None, "train on a seeded random subset of this many examples", gt=0)
    max_valid_examples: int | None = _opt(200, "examples used for the validation loss; null: all", ge=0)
    source: str | dict[str, str | list[str]] | None = _opt(
        None, "task text: a file or directory datasets reads (jsonl, json, csv, tsv, parquet, arrow, a save_to_disk "
        "dir), a glob of shards (data/*.parquet), or a Hub dataset id (online only); or a mapping of split to "
        "file(s) or glob(s), as datasets' data_files ({train: a.jsonl, validation: b.jsonl}); relative to data_dir",
        nonempty=True,
    )
    source_config: str | None = _opt(None, "Hub dataset configuration name (data.source is a Hub id)")
    source_revision: str | None = _opt(None, "Hub dataset revision: branch, tag or commit (data.source is a Hub id)")
    train_split: str = _opt("train", "split of data.source to train on", nonempty=True)
    valid_split: str | None = _opt(
        None, "split of data.source for validation (as eval.split); null: the source's dev/validation split if any"
    )
    valid_fraction: float = _opt(
        0.0, "carve this fraction of the training rows out as the validation split (seeded); 0: off", ge=0, lt=1
    )
    format: Literal["auto", "completion", "classification", "chat", "alpaca", "sharegpt"] = _opt(
        "auto", "row format: completion (prompt + completion), classification, chat (a list of messages), alpaca "
        "(instruction/input/output), sharegpt (chat as conversations: from/value, human/gpt/system); "
        "auto: completion if completion_field, classification if label_field, else chat",
    )
    label_names: tuple[str, ...] | None = _opt(
        None, "class names by id (classification): labels are these names (or ids); null: the train split's sorted "
        "labels", any_text=True)
    role_field: str | None = _opt(None, "key of a message's role (chat: role, sharegpt: from)", nonempty=True)
    content_field: str | None = _opt(None, "key of a message's text (chat: content, sharegpt: value)", nonempty=True)
    role_names: dict[str, str] | None = _opt(
        None, "the file's role names -> system, user, assistant, tool (sharegpt: {system: system, human: user, gpt: "
        "assistant, observation: tool}); null: the format's")
    prompt_field: str | None = _opt(None, "field holding the prompt text (completion format; or use prompt_template)")
    messages_field: str | None = _opt(
        None, "field holding the conversation (null: messages for chat, conversations for sharegpt), a list of "
        "{role, content} (chat format; or give prompt_field / "
        "prompt_template + completion_field for one user turn and one assistant reply)", nonempty=True)
    system_prompt: str | None = _opt(
        None, "chat format: a system message put first in each conversation that has none (null: the template's default)"
    )
    instruction_field: str = _opt("instruction", "field holding the instruction (alpaca format)", nonempty=True)
    input_field: str = _opt("input", "field holding the optional input (alpaca format)", nonempty=True)
    output_field: str = _opt("output", "field holding the response to learn (alpaca format)", nonempty=True)
    cache: bool = _opt(True, "keep the tokenised data on disk (<cache>/data) and reuse it while nothing it depends on changes")
    num_proc: int | None = _opt(None, "processes that tokenise; null: one per 2 CPU cores above 2, at most 8", gt=0)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """`train:` the optimisation loop."""

    epochs: float = _opt(1.0, "passes over the training data (fractions allowed)", gt=0)
    max_steps: int | None = _opt(None, "optimizer steps to run; when set, overrides epochs", gt=0)
    batch_size: int = _opt(8, "examples per forward pass (per rank with several processes)", gt=0)
    grad_accum: int = _opt(1, "forward passes per optimizer step", gt=0)
    lr: float = _opt(2e-4, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = _opt(0.0, "AdamW weight decay", ge=0)
    warmup_steps: int = _opt(0, "optimizer steps of linear warm-up from 0 to lr", ge=0)
    schedule: Literal["linear", "cosine", "constant"] = _opt("linear", "learning-rate decay after warm-up")
    max_grad_norm: float | None = _opt(1.0, "clip the gradient norm to this; null: no clipping", gt=0)
    loraplus_lr_ratio: float | None = _opt(
        None, "LoRA+ (Hayou et al. 2024): lora_B and 1-D trainable parameters learn at lr x this ratio, lora_A at lr "
        "(PEFT's create_loraplus_optimizer); null: one lr for all", gt=0,
    )
    loraplus_lr_embedding: float = _opt(
        1e-6, "LoRA+: the lr of lora_A / lora_B on embedding layers (PEFT's loraplus_lr_embedding)", gt=0
    )
    batching: Literal["auto", "bucket", "pad", "pack"] = _opt(
        "auto",
        "auto: pack for causal LMs, bucket for classifiers; bucket: batch examples of similar length (little "
        "padding); pad: random batches padded to their longest; pack (causal LMs): random batches joined into "
        "one unpadded row, attention kept within each example",
    )
    log_every: int = _opt(10, "log the training loss every N optimizer steps", gt=0)
    eval_every: int = _opt(0, "validation loss every N optimizer steps; 0: only at the end", ge=0)
    save_every: int = _opt(0, "checkpoint every N optimizer steps; 0: none (Ctrl-C and SIGTERM still write one)", ge=0)
    keep_checkpoints: int = _opt(2, "how many recent checkpoints to keep", gt=0)
    best_metric: str = _opt(
        "valid_loss", "what early_stopping_patience and keep_best watch: valid_loss (every train.eval_every steps) "
        "or a task metric evaluated every eval.every steps (accuracy, bleu, ...); names ending in loss are "
        "minimised, others maximised", nonempty=True,
    )
    early_stopping_patience: int = _opt(
        0, "stop after this many evaluations of best_metric in a row without improvement; 0: never stop early", ge=0
    )
    keep_best: bool = _opt(
        False, "save the adapter of the best evaluation of best_metric rather than the last (summary.json: best.step)"
    )
    method: Literal["lora", "full", "head"] = _opt(
        "lora", "lora: train LoRA adapters (+ head); full: train every weight; head: train only the head / modules_to_save"
    )
    gradient_checkpointing: bool = _opt(
        False, "recompute each decoder layer's activations in the backward pass instead of keeping them: less "
        "memory, ~1 extra forward per step; same loss and gradients (docs/quantization.md)"
    )
    distributed: Literal["ddp", "fsdp"] = _opt(
        "ddp",
        "with several processes (lorafit train --nproc N, or torchrun): ddp: every rank holds the whole model, "
        "trainable gradients summed over the ranks; fsdp: FSDP2 shards every weight over the ranks (one unit per "
        "decoder layer), for a base too big for one device (no task evaluation during training). batch_size is "
        "per rank: the global batch is batch_size x ranks x grad_accum (docs/distributed.md)",
    )


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """`eval:` the task evaluation (generation or classification, then the task's metrics)."""

    split: str = _opt("dev", "split evaluated (and used for the validation loss)", nonempty=True)
    limit: int | None = _opt(None, "evaluate only the first N examples; null: all", gt=0)
    at_end: bool = _opt(False, "run the task evaluation on split at the end of training")
    every: int = _opt(0, "run the task evaluation every N optimizer steps; 0: never during training", ge=0)
    batch_size: int = _opt(16, "examples per generation or classification batch", gt=0)
    beam_size: int = _opt(1, "beams for generation; 1: greedy", gt=0)
    length_penalty: float = _opt(1.0, "beam-search length penalty (exponent on the length)")
    no_repeat_ngram_size: int = _opt(0, "forbid repeating n-grams of this size; 0: off", ge=0)
    max_new_tokens: int = _opt(64, "tokens generated per example at most", gt=0)
    chat_template: bool = _opt(False, "wrap each prompt in the tokenizer's chat template (zero-shot instruct models)")
    show_examples: int = _opt(
        0, "after training, print N held-out inputs with the base model's and the adapted model's output", ge=0
    )


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """`log:` where training progress goes besides metrics.jsonl."""

    tensorboard: bool = _opt(False, "also write TensorBoard scalars into <run>/tensorboard/ (needs lorafit[tensorboard])")
    plot: bool = _opt(True, "write a loss-curve plot into the run directory")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A fine-tuning run: base model, task, LoRA shape, training and evaluation settings."""

    name: str = _opt("", "run name; empty: the recipe file's name without .yaml")
    model: str = field(metadata={"help": "HF id, local directory, or alias (smollm2-135m, minilm-l6)", "nonempty": True})
    task: str = field(metadata={"help": "e2e, wikisql, text, glue/sst2, glue/mrpc, ...", "nonempty": True})
    data_dir: str | None = _opt(None, "directory holding the datasets; null: $LORAFIT_DATA")
    seed: int = _opt(0, "seed for LoRA's initialisation, data order and subsampling")
    precision: Literal["fp32", "bf16", "auto"] = _opt(
        "auto", "fp32; bf16 autocast for the forward passes; auto: bf16 where the hardware has bf16 matmuls "
        "(CPUs with AVX512-BF16 or AMX, GPUs with bf16), else fp32 (docs/performance.md)"
    )
    device: Literal["auto", "cpu", "cuda"] = _opt(
        "auto", "where to train: auto: a CUDA GPU when torch sees one, else the CPU ($LORAFIT_DEVICE overrides auto)"
    )
    quantize: Literal["none", "int8", "nf4"] = _opt(
        "none", "store the frozen base's linear layers in 8 bits (int8, LLM.int8) or 4 bits (nf4, QLoRA) while "
        "training; the adapter stays fp32 and applies to the full-precision base (docs/quantization.md)"
    )
    output_dir: str | None = _opt(None, "run directory; null: runs/<name>")
    lora: LoraConfig = _section(LoraConfig, "LoRA adapters")
    data: DataConfig = _section(DataConfig, "data files and lengths")
    train: TrainConfig = _section(TrainConfig, "training loop")
    eval: EvalConfig = _section(EvalConfig, "task evaluation")
    log: LogConfig = _section(LogConfig, "logging")


def _show(value: Any) -> str:
    """A value as the user wrote it, short: 'four', -0.001, true, null, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {str(value)[:40]!r}"
