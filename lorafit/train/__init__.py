"""Training: `setup` (recipe -> model, data, loop settings), `loop` (fit: the optimizer loop on one
screen) and `loss` (losses that compute only what counts)."""
