"""A lean decode loop for causal LMs, one adapter slot per row, ready for continuous batching.

    batch = DecodeBatch(model, routing, eos_ids=[2], pad_id=0)
    batch.add([Request(prompt_ids, slot=3, max_new_tokens=32), ...])   # prefill; first token sampled
    while batch.rows:
        for row in batch.step():                                        # one token for every live row
            ...                                                         # rows that finished left the batch

Per-row state lives in tensors aligned with `batch.rows` (B rows, L cached positions):

    cache          transformers DynamicCache, per layer keys/values (B, heads, L, head_dim); every layer,
                   sliding-window layers included, keeps all L columns (see "Sliding windows" below)
    mask           (B, L) 1 where the cache holds a real token of the row, 0 for left padding
    next_pos       (B,)   position id of the row's next token (its own count of real tokens)
    last_token     (B,)   the token fed at the next step
    slots          (B,)   the row's adapter slot (0 = base), routed to the layers via `SlotRouting`

Rows are left-padded, so every row's next token sits at column L and one forward of (B, 1) tokens
serves all rows, each with its own positions and mask (as `model.generate` does; greedy tokens are
the same). `add` prefills new rows on their own (by length, PREFILL_ROWS per forward) and joins them
to the batch by left-padding the shorter cache; finished rows (eos or max_new_tokens) leave at once,
and padding columns no row needs any more are cropped. The batch is kept sorted by slot, so each
adapter's rows are one slice.

Sliding windows (Mistral, Gemma 2/3, Qwen2/3, Starcoder2: some or all layers attend to the last
`sliding_window` positions only): the window is applied by the attention mask the model builds from
the (B, L) mask, in cache columns. A row's real tokens are contiguous columns ending at L (left padding
only, never a hole), so a column distance is a position distance and the mask is the row's own window.
The one layout with a hole, a shared prefix ([prefix | padding | rest]), is therefore not used on such
models. Sliding layers keep all columns instead of the last window: the memory of a full-attention
layer, the tokens of `model.generate` with its window-sized caches.

Sampling is per row: greedy (temperature 0, the default) or temperature + top_p with the row's own
seeded generator, so a row's tokens do not depend on which other rows share its batch.

`add` is atomic: every request is checked first (`check_request`), all prefills run before any row
joins, so if anything raises the batch is exactly as it was; a server fails only that admission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lorafit.adapters.attention_kinds import attention_layer_types, check_decodable
from lorafit.eval.generate import left_padded
from lorafit.lora.multi import SlotRouting

# Rows per prefill forward in `add`. Prompts go in order of length, so a chunk pads only to its own
# longest: on the bench's 64 prompts of 19-30 SmolLM2 tokens, one forward pads 1,531 real tokens to
# 1,920 (20% waste), chunks of 16 to 1,648 (7%), while 16 prompts still make matmuls of ~400 rows.
PREFILL_ROWS = 16

# Prompts of one adapter that start alike (an instruction template, a system prompt) share their
# prefill: the common prefix runs once and its keys/values are copied to each row. Worth an extra
# forward only when it saves this many prompt tokens or more ((rows - 1) x prefix length).
SHARED_PREFIX_MIN_SAVED = 64

# Temperatures below this decode greedily (as vLLM does): logits / 1e-40 overflow to inf, and a
# softmax over them is NaN.
GREEDY_BELOW = 1e-5

# torch.Generator.manual_seed takes 0..2**64-1; OpenAI's seed is int64: accept what both can hold.
MAX_SEED = 2**63 - 1


@dataclass
class Request:
    """One prompt to continue. `key` is the caller's handle for it (e.g. its input line)."""

    prompt_ids: list[int]
    slot: int = 0
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    key: object = None


@dataclass
class Row:
    """A request being decoded: its new tokens so far and, once done, why it stopped."""

    request: Request
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "eos" or "length"


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad `t` on the left of `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _full_cache():
    """A DynamicCache whose layers all keep every column (DynamicLayer), sliding-window ones too: the
    joins and crops here treat all layers alike, and the mask applies the window (module doc)."""
    from transformers import DynamicCache

    return DynamicCache()


def _common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `prompts` share."""
    first, n = prompts[0], min(len(p) for p in prompts)
    for i in range(n):
        token = first[i]
        if any(p[i] != token for p in prompts):
            return i
    return n


def sample_next(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """The next token per row from logits (B, vocab): argmax, or a top-p sample at the row's temperature."""
    # argmax over a bf16 (B, vocab) is ~2x slower on CPU than casting to fp32 first (49k-word vocab, 64 rows).
    tokens = logits.float().argmax(dim=-1).cpu()  # (B,)
    for i, row in enumerate(rows):
        req = row.request
        if req.temperature < GREEDY_BELOW:
            continue
        # Sampled on the CPU whatever the model's device: a row's seeded generator is a CPU one, so a
        # seed gives the same tokens on a GPU host as on a CPU host.
        probs = torch.softmax(logits[i].float().cpu() / req.temperature, dim=-1)  # (vocab,)
        if req.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Keep the smallest head whose mass reaches top_p (the token crossing it included).
            keep = sorted_p.cumsum(0) - sorted_p < req.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            continue  # non-finite logits (a diverged adapter): greedy, rather than fail every row of the step
        tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
    return tokens


def check_request(req: Request, vocab_size: int | None = None) -> None:
    """ValueError naming the first field of `req` the decode loop cannot run (before any forward)."""
    if not req.prompt_ids:
        raise ValueError("prompt_ids: a request needs at least one prompt token")
    top = vocab_size if vocab_size is not None else 2**63
    if any(not isinstance(t, int) or not 0 <= t < top for t in req.prompt_ids):
        raise ValueError(f"prompt_ids: token ids must be integers in [0, {top})")
    if not isinstance(req.max_new_tokens, int) or req.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {req.max_new_tokens!r}")
    if not 0 <= req.temperature < float("inf"):  # also refuses NaN
        raise ValueError(f"temperature must be finite and >= 0, got {req.temperature!r}")
    if not 0 < req.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {req.top_p!r}")
    if req.seed is not None and (not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {req.seed!r}")


class DecodeBatch:
    """Rows decoding together on one model; `add`, `step` and `remove` may be interleaved freely."""

    def __init__(self, model: nn.Module, routing: SlotRouting | None, eos_ids: Sequence[int], pad_id: int,
                 share_prefixes: bool = True):
        """`share_prefixes`: prefill a prefix common to one adapter's new prompts once (see `add`)."""
        check_decodable(model.config)
        self.model = model
        # A shared prefix leaves a hole in its rows' columns, which a sliding window must not span (module doc).
        self.share_prefixes = share_prefixes and "sliding_attention" not in attention_layer_types(model.config)
        self.routing = routing or SlotRouting()
        self.eos_ids = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        self.rows: list[Row] = []
        self.cache = None
        self.mask = self.next_pos = self.last_token = self.slots = None

    # ------------------------------------------------------------------------------------------ public

    @torch.no_grad()
    def add(self, requests: Sequence[Request]) -> list[Row]:
        """Prefill `requests`, sample each one's first token and join the batch.

        Prompts are prefilled in order of length, PREFILL_ROWS at a time (left-padded, one forward
        each), so a short prompt is not padded to the longest of the whole call. The prompts of one
        adapter slot that share a prefix long enough to pay (SHARED_PREFIX_MIN_SAVED) prefill it once,
        as a group of their own (never across slots: an adapter changes the keys/values). Returns the rows that
        finished on that first token (they never join), in the requests' order.

        Atomic: a bad request (ValueError from `check_request`) or a failing forward raises before any
        row joins, and the batch is exactly as it was."""
        if not requests:
            return []
        for req in requests:
            check_request(req, self.vocab_size)
        done, joins = [], []
        for group, shared in self._prefill_groups(requests):
            for start in range(0, len(group), PREFILL_ROWS):
                finished, join = self._prefill(group[start : start + PREFILL_ROWS], shared)
                done += finished
                if join is not None:
                    joins.append(join)
        before = self._snapshot()
        try:
            for join in joins:  # only now, when every forward has succeeded
                self._join(*join)
            if self.rows:
                self._keep(list(range(len(self.rows))))  # sort by slot, crop padding
        except BaseException:
            self._restore(before)
            raise
        position = {id(r): i for i, r in enumerate(requests)}
        return sorted(done, key=lambda row: position[id(row.request)])

    def _prefill_groups(self, requests: Sequence[Request]) -> list[tuple[list[Request], tuple | None]]:
        """The requests in prefill groups, each sorted by prompt length: one group per adapter slot whose
        prompts share a prefix long enough to pay (with that prefix's cache), then all the others."""
        by_slot: dict[int, list[Request]] = {}
        for req in sorted(requests, key=lambda r: len(r.prompt_ids)):
            by_slot.setdefault(req.slot, []).append(req)
        groups, rest = [], []
        for slot, group in by_slot.items():
            # Every row keeps at least its last prompt token to prefill (its logits give the first token).
            # The bound first: a serving engine admits one or two prompts at a time, and comparing a long
            # prompt token by token with itself on every admission would be wasted work.
            longest = len(group[0].prompt_ids) - 1
            p = 0
            if self.share_prefixes and (len(group) - 1) * longest >= SHARED_PREFIX_MIN_SAVED:
                p = min(_common_prefix_length([r.prompt_ids for r in group]), longest)
            if (len(group) - 1) * p >= SHARED_PREFIX_MIN_SAVED:
                groups.append((group, self._shared_prefix(group[0].prompt_ids[:p], slot)))
            else:
                rest += group
        if rest:
            groups.append((sorted(rest, key=lambda r: len(r.prompt_ids)), None))
        return groups

    def _shared_prefix(self, prefix: list[int], slot: int) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One forward over `prefix` on `slot`: its length and per-layer keys/values (1, heads, p, head_dim)."""
        cache = _full_cache()
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        with self.routing.use(torch.tensor([slot], dtype=torch.long, device=self.device)):
            self.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(prefix))[None].to(self.device),
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
        return len(prefix), [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill(self, requests: Sequence[Request], shared: tuple | None = None) -> tuple[list[Row], tuple | None]:
        """One left-padded forward over `requests`: the rows that finished on their first token, and the
        `_join` arguments of the live ones (None if none), for `add` to join once every forward succeeded.

        `shared`: (p, per-layer keys/values) of a prefix all `requests` start with, on their one slot
        (from `_shared_prefix`): only the rest of each prompt is fed, after a copy of that cache. Each
        row's cache then reads [prefix | left padding | rest of its prompt]; the mask skips the hole."""
        p = 0 if shared is None else shared[0]
        ids, mask = left_padded([r.prompt_ids[p:] for r in requests], self.pad_id)  # (n, width) each
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) + p  # as model.generate makes them
        slots = torch.tensor([r.slot for r in requests], dtype=torch.long)
        cache = _full_cache()
        if shared is not None:
            n = len(requests)
            for index, (keys, values) in enumerate(shared[1]):
                cache.update(keys.expand(n, -1, -1, -1).contiguous(), values.expand(n, -1, -1, -1).contiguous(), index)
            mask = torch.cat([mask.new_ones(n, p), mask], dim=1)  # (n, p + width)
        with self.routing.use(slots.to(self.device)):
            out = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device), past_key_values=cache, use_cache=True, logits_to_keep=1,
            )
        new_rows = [Row(req, self._generator(req)) for req in requests]
        tokens = sample_next(out.logits[:, -1, :], new_rows).cpu()
        done = self._record(tokens, new_rows)
        live = [i for i, d in enumerate(done) if not d]
        join = None
        if live:
            index = torch.tensor(live, dtype=torch.long)
            cache = out.past_key_values
            if len(live) < len(new_rows):
                cache.batch_select_indices(index.to(self.device))
            join = ([new_rows[i] for i in live], cache, mask[index], positions[index, -1] + 1, tokens[index], slots[index])
        return [row for row, d in zip(new_rows, done, strict=True) if d], join

    @torch.no_grad()
    def step(self) -> list[Row]:
        """One token for every live row. Returns the rows that finished (they have left the batch)."""
        if not self.rows:
            return []
        ones = self.mask.new_ones(len(self.rows), 1)
        self.mask = torch.cat([self.mask, ones], dim=1)  # the token fed now is real for every row
        with self.routing.use(self.slots.to(self.device)):
            out = self.model(
                input_ids=self.last_token[:, None].to(self.device), attention_mask=self.mask.to(self.device),
                position_ids=self.next_pos[:, None].to(self.device), past_key_values=self.cache, use_cache=True,
            )
        self.cache = out.past_key_values
        self.next_pos = self.next_pos + 1
        tokens = sample_next(out.logits[:, -1, :], self.rows).cpu()
        self.last_token = tokens
        done = self._record(tokens, self.rows)
        finished = [row for row, d in zip(self.rows, done, strict=True) if d]
        if finished:
            self._keep([i for i, d in enumerate(done) if not d])
        return finished

    def remove(self, keys: Sequence[object]) -> list[Row]:
        """Take the rows whose request key is in `keys` out of the batch (a cancelled request)."""
        gone = set(keys)
        leaving = [row for row in self.rows if row.request.key in gone]
        if leaving:
            self._keep([i for i, row in enumerate(self.rows) if row.request.key not in gone])
        return leaving

    def run(self, requests: Sequence[Request]) -> list[Row]:
        """Decode `requests` to the end; rows come back in the requests' order."""
        done = self.add(requests)
        while self.rows:
            done += self.step()
        index = {id(r): i for i, r in enumerate(requests)}
        return sorted(done, key=lambda row: index[id(row.request)])

    # ------------------------------------------------------------------------------------------ internals

    @staticmethod
    def _generator(req: Request) -> torch.Generator | None:
        if req.temperature < GREEDY_BELOW:
            return None
        gen = torch.Generator()
        if req.seed is None:
            gen.seed()
        else:
            gen.manual_seed(req.seed)
        return gen

    def _record(self, tokens: torch.Tensor, rows: list[Row]) -> list[bool]:
        """Append each row's new token; mark the rows that are done (eos, or max_new_tokens reached)."""
        is_eos = torch.isin(tokens, self.eos_ids).tolist()
        for row, token, eos in zip(rows, tokens.tolist(), is_eos, strict=True):
            row.tokens.append(token)
            if eos:
                row.finish_reason = "eos"
            elif len(row.tokens) >= row.request.max_new_tokens:
                row.finish_reason = "length"
        return [row.finish_reason is not None for row in rows]

    def _join(self, rows, cache, mask, next_pos, tokens, slots) -> None:
        """Append prefilled rows; left-pad whichever cache is shorter so every row ends at column L."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.next_pos, self.last_token, self.slots = next_pos, tokens.clone(), slots
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
                old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.rows += rows
            self.next_pos = torch.cat([self.next_pos, next_pos])
            self.last_token = torch.cat([self.last_token, tokens])
            self.slots = torch.cat([self.slots, slots])

    def _snapshot(self) -> tuple:
        """References to the batch's state (joins and crops build new tensors; they never write into these)."""
        layers = [(layer.keys, layer.values) for layer in self.cache.layers] if self.cache is not None else None
        return list(self.rows), self.cache, layers, self.mask, self.next_pos, self.last_token, self.slots

    def _restore(self, state: tuple) -> None:
        self.rows, self.cache, layers, self.mask, self.next_pos, self.last_token, self.slots = state
        for layer, (keys, values) in zip(self.cache.layers if self.cache is not None else [], layers or [], strict=True):
            layer.keys, layer.values = keys, values

    def _keep(self, indices: list[int]) -> None:
        """Keep these rows (in this order, sorted by slot afterwards) and crop unused left padding."""
        order = sorted(indices, key=lambda i: int(self.slots[i]))  # stable: equal slots keep their order
        if not order:
            self.rows, self.cache = [], None
            self.mask = self.next_pos = self.last_token = self.slots = None
            return
        if order != list(range(len(self.rows))):
            index = torch.tensor(order, dtype=torch.long)
            self.cache.batch_select_indices(index.to(self.device))
            self.rows = [self.rows[i] for i in order]
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]
            self.last_token, self.slots = self.last_token[index], self.slots[index]
        # Columns where every remaining row is padding serve no row: drop them from the cache.
        first_real = int(self.mask.argmax(dim=1).min())
        if first_real > 0:
            self.mask = self.mask[:, first_real:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first_real:], layer.values[:, :, first_real:]
