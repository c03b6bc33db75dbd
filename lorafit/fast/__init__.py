"""CPU fast paths, each an explicit option (`fast.options.FastOptions`): a cheap dropout mask,
attention dropout and packed attention, bf16 precision with cached weight casts, and memory
(heap trimming, oneDNN's kernel cache)."""
