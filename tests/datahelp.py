"""Helpers for the data-pipeline tests: recipes from a few keys, files, a ChatML template for tiny tokenizers."""

import json
from pathlib import Path

import yaml

from lorafit.recipe import parse_recipe

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def recipe(task: str = "text", **data):
    """A recipe for `task` with these data: keys (model is never loaded by these tests)."""
    text = yaml.safe_dump({"model": "none", "task": task, "data": data}) if data else f"model: none\ntask: {task}\n"
    return parse_recipe(text)


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_tokenizer(template: str = CHATML):
    """The tests' character-level tokenizer with a ChatML-like chat template."""
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = template
    return tok


def conversation(i: int, turns: int = 1, system: bool = True):
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for t in range(turns):
        messages += [{"role": "user", "content": f"q{i}.{t}"}, {"role": "assistant", "content": f"a{i}.{t}"}]
    return {"messages": messages}
