"""bench/profile_step.py's accounting: which profiler events count as matmul work, and the achieved and
ceiling shares of the matmul peak, against a hand computation."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_step  # noqa: E402


def test_profiler_events_fall_in_the_documented_categories():
    expected = {
        "aten::mm": "matmul",
        "aten::addmm": "matmul",
        "aten::bmm": "matmul",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
        "aten::random_": "random",
        "aten::bernoulli_": "random",
        "aten::gelu_backward": "other ops",
        "aten::copy_": "other ops",
        "autograd::engine::evaluate_function: MmBackward0": "no op",
        "Optimizer.step#AdamW.step": "no op",
    }
    assert {name: profile_step.category(name) for name in expected} == expected


def test_achieved_and_ceiling_shares_match_a_hand_computation():
    run = {
        "timed": 10, "timed_seconds": 10.0, "timed_flops": 10 * 150e9,  # 1 s and 150 GFLOP per step
        # profiled steps: 4 s of matmul + attention for 1e12 counted FLOPs -> 4e-12 s per FLOP
        "profiled_flops": 1e12, "profiled_seconds": 8.0,
        "by_category_s": {"matmul": 3.5, "attention": 0.5, "random": 0.5, "other ops": 2.5, "no op": 1.0},
    }
    out = profile_step.analyse(run, peak_gflops=300)
    # per timed step: counted work 150e9 * 4e-12 = 0.6 s, rest 0.4 s; at the peak the FLOPs take 0.5 s
    assert math.isclose(out["step_s"], 1.0)
    assert math.isclose(out["achieved"], 0.5)
    assert math.isclose(out["rest_s"], 0.4)
    assert math.isclose(out["counted_work_efficiency"], 0.5 / 0.6)
    assert math.isclose(out["ceiling"], 0.5 / 0.9)
    assert math.isclose(out["shares"]["matmul"], 3.5 / 8)
