"""Tiny random models built from configs (no network), shared by the unit tests.

Each builder is seeded so two calls give identical weights: tests build the same base twice to
compare lorafit against PEFT or a merged model against the adapter.
"""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

HIDDEN = 32
LAYERS = 2
VOCAB = 128


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama (square q/k/v/o since kv heads == heads), tied embeddings off."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2: its attention and MLP use Conv1D (weights stored transposed)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    """A 2-layer BERT with a sequence-classification head (`classifier`)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, pad_token_id=0,
    )
    return BertForSequenceClassification(config).eval()


def token_batch(seed: int = 1, batch: int = 2, length: int = 9) -> torch.Tensor:
    """Random token ids (batch, length), avoiding the pad id 0."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def with_trained_looking_lora(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with LoRA r=4 on every linear layer and non-zero lora_B (a fixed draw per parameter
    name), so the adapters change the output and have gradients worth comparing."""
    from lorafit.lora import LoraSpec, add_lora

    add_lora(model, LoraSpec(rank=4, alpha=8, targets=("all-linear",)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


def randomize_lora(model: torch.nn.Module, seed: int = 2) -> None:
    """Give every lora_B non-zero values, as after training, so deltas are not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)


def tiny_tokenizer():
    """A character-level fast tokenizer (102 ids < VOCAB): <pad>=0, <s>=1, </s>=2, <unk>=3.

    Single texts get a leading <s>; pairs are joined as "<s> A </s> B".
    """
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"] + ["£", "é"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_model(path, kind: str = "llama", num_labels: int = 2):
    """Write a tiny model + tokenizer directory that `model: <path>` in a recipe can load."""
    builders = {"llama": tiny_llama, "gpt2": tiny_gpt2}
    model = tiny_bert(num_labels=num_labels) if kind == "bert" else builders[kind]()
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
