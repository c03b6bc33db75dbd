"""Analysis of trained adapters (LoRA paper, section 7): spectra of ΔW, subspace similarity between
adapters, amplification of W's directions, and rank truncation. `lorafit analyze` drives it
(lorafit/workflows/analyze.py)."""
