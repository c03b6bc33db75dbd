"""`lorafit analyze`: spectra, subspace similarity, amplification and truncation against known answers.

Constructions with a known result: a ΔW built from a chosen spectrum, a subspace compared with itself,
independent random subspaces (expectation derived in similarity.py), dense SVDs on small matrices,
and a truncated adapter loaded back into lorafit and into PEFT on a tiny Llama.
"""

import json
import math

import pytest
import torch
from tiny import randomize_lora, save_tiny_model, tiny_bert, tiny_gpt2, tiny_llama, token_batch

from lorafit.analysis.amplification import amplification, base_weight
from lorafit.analysis.factors import LayerFactors, read_factors
from lorafit.analysis.similarity import compare_adapters, phi_matrix, singular_basis
from lorafit.analysis.spectrum import effective_rank, energy_fractions, factor_svd, frobenius_norm
from lorafit.analysis.truncate import energy_kept, truncate_adapter, truncated_factors
from lorafit.errors import LorafitError
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoraSpec,
    add_lora,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter,
    spec_from_config,
)

PREFIX = "base_model.model."


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def factors_with_spectrum(s: torch.Tensor, d_out: int, d_in: int, scale: float, seed: int = 0):
    """(A, B) with scale · B A = U diag(s) Vᵀ, hidden behind a random invertible mixing R: B R, R^-1 A."""
    r = s.shape[0]
    u, v = orthonormal(d_out, r, seed), orthonormal(d_in, r, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    mix = torch.randn(r, r, generator=g, dtype=torch.float64) + 3 * torch.eye(r, dtype=torch.float64)
    b = (u * s.to(torch.float64)) @ mix / scale
    a = torch.linalg.solve(mix, v.T)
    return a, b, u, v


def save_llama_adapter(path, rank=4, alpha=8.0, targets=("q_proj", "v_proj"), seed=2, rslora=False):
    """A tiny Llama with a random ('trained-looking') adapter saved in PEFT format; returns (model, spec)."""
    model = tiny_llama()
    spec = LoraSpec(rank=rank, alpha=alpha, targets=targets, rslora=rslora)
    add_lora(model, spec)
    randomize_lora(model, seed=seed)
    save_adapter(model, path, spec, base_model_name_or_path="tiny-llama", task_type="CAUSAL_LM",
                 metadata={"lorafit_version": "test", "lorafit_task": "text"})
    return model.eval(), spec


def load_into_lorafit(base: torch.nn.Module, directory) -> torch.nn.Module:
    """add_lora with the directory's config, then copy every tensor by name (no key left unused)."""
    spec = spec_from_config(read_adapter_config(directory))
    add_lora(base, spec)
    tensors, _ = read_adapter_tensors(directory)
    state = {k[len(PREFIX):]: v for k, v in tensors.items()}
    result = base.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    return base.eval()


# ------------------------------------------------------------------------------------------ spectrum


def test_spectrum_of_known_construction_and_effective_rank():
    s = torch.tensor([10.0, 3.0, 1.0, 0.1])
    a, b, u, v = factors_with_spectrum(s, d_out=40, d_in=24, scale=2.5)
    svd = factor_svd(a, b, 2.5)
    assert torch.allclose(svd.s, s.double(), atol=1e-5)
    # Same subspaces as the construction, and U S Vᵀ rebuilds ΔW.
    assert torch.allclose((u.T @ svd.u).abs(), torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(svd.u @ torch.diag(svd.s) @ svd.v.T, 2.5 * b @ a, atol=1e-5)
    assert torch.allclose(svd.u.T @ svd.u, torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(svd.v.T @ svd.v, torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert frobenius_norm(svd.s) == pytest.approx(math.sqrt(100 + 9 + 1 + 0.01), rel=1e-6)
    # energy: 100, 109, 110, 110.01 of 110.01 -> 90.9 %, 99.08 %, ...
    assert energy_fractions(svd.s)[0] == pytest.approx(100 / 110.01, rel=1e-6)
    assert effective_rank(svd.s, 0.90) == 1
    assert effective_rank(svd.s, 0.99) == 2
    assert effective_rank(svd.s, 1.0) == 4


def test_spectrum_of_rank_deficient_and_zero_updates():
    s = torch.tensor([5.0, 2.0, 0.0, 0.0])  # a rank-2 update stored at r = 4
    a, b, _, _ = factors_with_spectrum(s, d_out=16, d_in=12, scale=1.0)
    svd = factor_svd(a, b, 1.0)
    assert torch.allclose(svd.s, s.double(), atol=1e-5)
    assert effective_rank(svd.s, 0.99) == 2
    zero = factor_svd(torch.randn(4, 12), torch.zeros(16, 4), 2.0)  # B = 0, as at initialisation
    assert frobenius_norm(zero.s) == 0.0 and effective_rank(zero.s, 0.9) == 0


def test_spectrum_matches_dense_svd_on_random_factors():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 30, generator=g), torch.randn(20, 6, generator=g)
    svd = factor_svd(a, b, 0.7)
    dense = torch.linalg.svdvals(0.7 * b.double() @ a.double())[:6]
    assert torch.allclose(svd.s, dense, atol=1e-5)


def test_gpt2_conv1d_factors_are_stored_like_linear_ones(tmp_path):
    """PEFT keeps A (r, d_in), B (d_out, r) for Conv1D too, transposing only the merged delta."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_gpt2(), peft.LoraConfig(r=3, lora_alpha=6, target_modules=["c_attn"],
                                                             fan_in_fan_out=True))
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    factors = read_factors(tmp_path)
    first = factors.layer_map()["transformer.h.0.attn.c_attn"]
    d_in, d_out = layer.base_layer.weight.shape  # Conv1D weight: (d_in, d_out)
    assert first.a.shape == (3, d_in) and first.b.shape == (d_out, 3)
    delta = layer.get_delta_weight("default").double()  # in Conv1D orientation (d_in, d_out)
    svd = factor_svd(first.a, first.b, factors.scale)
    assert torch.allclose(svd.u @ torch.diag(svd.s) @ svd.v.T, delta.T, atol=1e-6)
    # The base weight is read back in ΔW's orientation for the amplification factor.
    w = base_weight(tiny_gpt2(), "transformer.h.0.attn.c_attn", first.shape)
    assert w.shape == (d_out, d_in)


# ---------------------------------------------------------------------------------------- similarity


def test_phi_of_an_adapter_with_itself_is_one_on_the_diagonal(tmp_path):
    save_llama_adapter(tmp_path / "a", rank=4)
    factors = read_factors(tmp_path / "a")
    for side in ("input", "output"):
        phis = compare_adapters(factors, factors, side=side)
        assert set(phis) == {layer.name for layer in factors.layers}
        for phi in phis.values():
            assert phi.shape == (4, 4)
            assert torch.allclose(torch.diagonal(phi), torch.ones(4, dtype=torch.float64), atol=1e-10)
            assert float(phi.min()) >= 0.0 and float(phi.max()) <= 1.0 + 1e-10


def test_phi_of_independent_random_subspaces_matches_its_expectation():
    """E[phi(i, j)] = max(i, j) / d (similarity.py); checked by the mean over seeded draws."""
    d, r1, r2, draws = 48, 6, 12, 300
    g = torch.Generator().manual_seed(11)
    samples = []
    for _ in range(draws):
        # The top-i right-singular subspace of a Gaussian A is uniformly distributed (rotation invariance).
        first = LayerFactors("x", torch.randn(r1, d, generator=g), torch.randn(d, r1, generator=g))
        second = LayerFactors("x", torch.randn(r2, d, generator=g), torch.randn(d, r2, generator=g))
        samples.append(phi_matrix(singular_basis(first), singular_basis(second)))
    stack = torch.stack(samples)
    mean, sem = stack.mean(0), stack.std(0) / math.sqrt(draws)
    i = torch.arange(1, r1 + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, r2 + 1, dtype=torch.float64)[None, :]
    expected = torch.maximum(i, j) / d
    assert torch.all((mean - expected).abs() <= 5 * sem + 1e-3), (mean - expected).abs().max()


def test_phi_matches_the_formula_on_a_small_case():
    u1, u2 = orthonormal(10, 3, 1), orthonormal(10, 5, 2)
    phi = phi_matrix(u1, u2)
    for i in range(1, 4):
        for j in range(1, 6):
            direct = torch.linalg.matrix_norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
            assert float(phi[i - 1, j - 1]) == pytest.approx(float(direct), abs=1e-12)


def test_phi_sees_a_shared_top_direction():
    """Two adapters sharing their top input direction (and nothing else) have phi(1, 1) = 1."""
    d = 32
    basis = orthonormal(d, 9, 3)
    shared, rest1, rest2 = basis[:, :1], basis[:, 1:4], basis[:, 4:9]
    a1 = torch.cat([5 * shared.T, rest1.T])  # (4, d): top right-singular vector = shared
    a2 = torch.cat([7 * shared.T, rest2.T])  # (6, d)
    phi = phi_matrix(singular_basis(LayerFactors("x", a1, torch.ones(d, 4))),
                     singular_basis(LayerFactors("x", a2, torch.ones(d, 6))))
    assert float(phi[0, 0]) == pytest.approx(1.0, abs=1e-10)
    assert float(phi[3, 5]) == pytest.approx(1 / 4, abs=1e-10)  # only 1 of the 4 directions is shared


# -------------------------------------------------------------------------------------- amplification


def test_amplification_against_a_dense_hand_computation():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(12, 10, generator=g, dtype=torch.float64)
    a, b = torch.randn(3, 10, generator=g), torch.randn(12, 3, generator=g)
    delta = 1.5 * b.double() @ a.double()
    u, s, vh = torch.linalg.svd(delta)  # the dense SVD the analysis avoids
    u3, v3 = u[:, :3], vh[:3].T
    hand_projection = torch.linalg.matrix_norm(u3.T @ w @ v3)
    result = amplification(factor_svd(a, b, 1.5), w)
    assert result["projection_norm"] == pytest.approx(float(hand_projection), rel=1e-6)
    assert result["delta_norm"] == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-6)
    assert result["factor"] == pytest.approx(float(torch.linalg.matrix_norm(delta) / hand_projection), rel=1e-6)
    uw, sw, vwh = torch.linalg.svd(w)
    assert result["projection_norm_top_w"] == pytest.approx(float(torch.linalg.matrix_norm(uw[:, :3].T @ w @ vwh[:3].T)), rel=1e-6)
    assert 0 < result["projection_norm_random"] < result["projection_norm_top_w"]


def test_amplification_of_an_update_along_w_top_directions_is_small():
    """ΔW that reuses W's own top directions: Uᵀ W V is W's top block, so the factor is ||ΔW|| / ||top block||."""
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    uw, sw, vwh = torch.linalg.svd(w)
    a, b = vwh[:2].float(), (uw[:, :2] * 0.5).float()  # ΔW = 0.5 · U_2 V_2ᵀ
    result = amplification(factor_svd(a, b, 1.0), w)
    assert result["projection_norm"] == pytest.approx(float(sw[:2].norm()), rel=1e-5)
    assert result["factor"] == pytest.approx(0.5 * math.sqrt(2) / float(sw[:2].norm()), rel=1e-5)


# ----------------------------------------------------------------------------------------- truncation


def test_truncation_to_full_rank_reproduces_the_outputs(tmp_path):
    model, _ = save_llama_adapter(tmp_path / "a", rank=4, alpha=6.0)
    report = truncate_adapter(read_factors(tmp_path / "a"), 4, tmp_path / "r4")
    assert report["energy_kept"] == pytest.approx(1.0)
    cut = load_into_lorafit(tiny_llama(), tmp_path / "r4")
    x = token_batch()
    with torch.no_grad():
        assert torch.allclose(cut(x).logits, model(x).logits, atol=1e-5)


def test_truncation_is_the_best_rank_k_approximation(tmp_path):
    save_llama_adapter(tmp_path / "a", rank=6, alpha=12.0)
    factors = read_factors(tmp_path / "a")
    k = 2
    g = torch.Generator().manual_seed(9)
    for layer in factors.layers:
        svd = factor_svd(layer.a, layer.b, factors.scale)
        delta = factors.scale * layer.b.double() @ layer.a.double()
        a, b = truncated_factors(svd, k, factors.scale)
        best = float(torch.linalg.matrix_norm(delta - factors.scale * b @ a))
        # Eckart-Young: the error is exactly the dropped singular values.
        assert best == pytest.approx(float(svd.s[k:].norm()), rel=1e-6)
        assert 1 - best**2 / float((svd.s**2).sum()) == pytest.approx(energy_kept(svd.s, k), rel=1e-6)
        # The best rank-k matrix inside a random k-dimensional part of A's row space.
        q, _ = torch.linalg.qr(layer.a.double().T @ torch.randn(6, k, generator=g, dtype=torch.float64))
        rivals = {
            "first k rows of A / columns of B": factors.scale * layer.b[:, :k].double() @ layer.a[:k].double(),
            "ours perturbed": factors.scale * (b + 1e-3 * torch.randn(b.shape, generator=g, dtype=torch.float64))
            @ (a + 1e-3 * torch.randn(a.shape, generator=g, dtype=torch.float64)),
            "rank-k projection onto a random part of A's span": delta @ q @ q.T,
        }
        for n in range(5):
            rivals[f"random {n}"] = torch.randn(delta.shape[0], k, generator=g, dtype=torch.float64) @ torch.randn(
                k, delta.shape[1], generator=g, dtype=torch.float64) * 0.01
        for label, rival in rivals.items():
            assert best <= float(torch.linalg.matrix_norm(delta - rival)) + 1e-9, label


def test_truncated_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    save_llama_adapter(tmp_path / "a", rank=4, alpha=6.0)  # scale 1.5 -> alpha 3 at r = 2, 1.5 at r = 1
    x = token_batch()
    for k, alpha in ((2, 3), (1, 1.5)):
        report = truncate_adapter(read_factors(tmp_path / "a"), k, tmp_path / f"r{k}")
        config = json.loads((tmp_path / f"r{k}" / CONFIG_NAME).read_text())
        assert config["r"] == k and config["lora_alpha"] == alpha and report["lora_alpha"] == alpha
        ours = load_into_lorafit(tiny_llama(), tmp_path / f"r{k}")
        theirs = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / f"r{k}")).eval()
        with torch.no_grad():
            assert torch.allclose(theirs(x).logits, ours(x).logits, atol=1e-5)
            assert not torch.allclose(ours(x).logits, tiny_llama()(x).logits, atol=1e-3)  # the update is there


def test_truncation_keeps_rslora_scale_heads_and_metadata(tmp_path):
    model = tiny_bert(num_labels=3)
    spec = LoraSpec(rank=4, alpha=8.0, targets=("query", "value"), rslora=True, modules_to_save=("classifier",))
    add_lora(model, spec)
    randomize_lora(model)
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny-bert", task_type="SEQ_CLS",
                 metadata={"lorafit_num_labels": "3", "lorafit_recipe_hash": "abc"})
    factors = read_factors(tmp_path / "a")
    assert factors.scale == pytest.approx(8 / math.sqrt(4))
    truncate_adapter(factors, 1, tmp_path / "r1")
    cut = read_factors(tmp_path / "r1")
    assert cut.scale == pytest.approx(factors.scale) and cut.rank == 1
    assert set(cut.other) == set(factors.other) and any("classifier" in k for k in cut.other)
    for key, tensor in factors.other.items():
        assert torch.equal(cut.other[key], tensor)
    assert cut.metadata["lorafit_recipe_hash"] == "abc" and cut.metadata["lorafit_num_labels"] == "3"
    note = json.loads(cut.metadata["lorafit_truncated"])
    assert note["from_rank"] == 4 and note["rank"] == 1 and 0 < note["energy_kept"] <= 1
    for before, after in zip(factors.layers, cut.layers, strict=True):
        s_before = factor_svd(before.a, before.b, factors.scale).s
        assert torch.allclose(factor_svd(after.a, after.b, cut.scale).s, s_before[:1], rtol=1e-5)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_adapters_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(LorafitError, match="no such directory"):
        read_factors(tmp_path / "missing")
    save_llama_adapter(tmp_path / "a")
    tensors, meta = read_adapter_tensors(tmp_path / "a")
    from safetensors.torch import save_file

    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG_NAME).write_text((tmp_path / "a" / CONFIG_NAME).read_text())
    save_file({k: v for k, v in tensors.items() if k != key}, str(broken / WEIGHTS_NAME))
    with pytest.raises(LorafitError, match=r"adapter_model.safetensors: .*lora_A.weight has no matching .*lora_B"):
        read_factors(broken)
    (broken / CONFIG_NAME).write_text("{not json")
    with pytest.raises(LorafitError, match="adapter_config.json: not valid JSON"):
        read_factors(broken)
    factors = read_factors(tmp_path / "a")
    for rank in (0, 5):
        with pytest.raises(LorafitError, match="--truncate-rank: must be between 1 and the adapter's rank 4"):
            truncate_adapter(factors, rank, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LorafitError, match="full: already exists"):
        truncate_adapter(factors, 2, tmp_path / "full")


def test_comparing_adapters_without_shared_layers_is_an_error(tmp_path):
    save_llama_adapter(tmp_path / "q", targets=("q_proj",))
    save_llama_adapter(tmp_path / "v", targets=("v_proj",))
    with pytest.raises(LorafitError, match="adapts none of the layers"):
        compare_adapters(read_factors(tmp_path / "q"), read_factors(tmp_path / "v"))


def test_amplification_refuses_another_base(tmp_path):
    save_llama_adapter(tmp_path / "a")
    layer = read_factors(tmp_path / "a").layers[0]
    with pytest.raises(LorafitError, match="base model has no module"):
        base_weight(tiny_gpt2(), layer.name, layer.shape)


def test_layer_naming_by_target_and_depth():
    layer = LayerFactors("model.layers.11.self_attn.q_proj", torch.zeros(2, 3), torch.zeros(4, 2))
    assert (layer.target, layer.depth, layer.shape) == ("q_proj", 11, (4, 3))
    assert LayerFactors("score", torch.zeros(2, 3), torch.zeros(4, 2)).depth is None


# ------------------------------------------------------------------------------------------ workflow


def test_run_analyze_writes_json_plots_comparison_and_truncation(tmp_path):
    from lorafit.analysis.report import report_tables
    from lorafit.workflows.analyze import run_analyze

    save_llama_adapter(tmp_path / "r4", rank=4, seed=2)
    save_llama_adapter(tmp_path / "r6", rank=6, alpha=12.0, seed=3)
    run = tmp_path / "run"  # a run directory: recipe.yaml + adapter/
    run.mkdir()
    (run / "recipe.yaml").write_text("model: tiny\n")
    (tmp_path / "r6").rename(run / "adapter")
    report = run_analyze(run, output_dir=tmp_path / "out", compare=tmp_path / "r4", truncate_rank=2)
    written = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert written["total"]["norm"] == pytest.approx(report["total"]["norm"])
    assert written["adapter"] == str(run / "adapter") and written["rank"] == 6
    assert {"spectra.png", "norms.png", "phi.png", "analysis.json", "adapter-r2"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    # 2 blocks x (q_proj, v_proj); by-target and by-depth groups share out the whole energy.
    assert len(report["layers"]) == 4 and set(report["by_target"]) == {"q_proj", "v_proj"}
    assert set(report["by_depth"]) == {"0", "1"}
    for groups in (report["by_target"], report["by_depth"]):
        assert sum(g["energy_share"] for g in groups.values()) == pytest.approx(1.0)
        assert math.sqrt(sum(g["norm"] ** 2 for g in groups.values())) == pytest.approx(report["total"]["norm"])
    # Advice: the rank that keeps 90 % / 99 % in every layer is the largest per-layer effective rank.
    assert report["advice"]["rank_for_99"] == max(r["rank99"] for r in report["layers"])
    assert report["compare"]["shared_layers"] == 4 and report["compare"]["ranks"] == [6, 4]
    assert len(report["compare"]["mean"]["matrix"]) == 6 and len(report["compare"]["mean"]["matrix"][0]) == 4
    truncated = read_factors(tmp_path / "out" / "adapter-r2")
    assert truncated.rank == 2
    kept = report["truncation"]["energy_kept"]
    energy = [r["norm"] ** 2 for r in report["layers"]]
    assert kept == pytest.approx(sum(e * r["energy"][1] for e, r in zip(energy, report["layers"], strict=True)) / sum(energy))
    titles = [title for title, _, _ in report_tables(report)]
    assert len(titles) == 4 and "truncated to rank 2" in titles[-1]


def test_run_analyze_with_the_base_model_gives_amplification(tmp_path):
    from lorafit.workflows.analyze import run_analyze

    base_dir = save_tiny_model(tmp_path / "base", "llama")
    save_llama_adapter(tmp_path / "a", rank=4)
    report = run_analyze(tmp_path / "a", model=str(base_dir))
    w_model = tiny_llama()
    factors = read_factors(tmp_path / "a")
    for record, layer in zip(report["layers"], factors.layers, strict=True):
        w = w_model.get_submodule(layer.name).weight.double()
        expected = amplification(factor_svd(layer.a, layer.b, factors.scale), w)
        assert record["amplification"]["factor"] == pytest.approx(expected["factor"], rel=1e-6)
    assert "amplification_mean" in report["by_target"]["q_proj"]
    json.dumps(report)  # serialisable as it is


def test_run_analyze_bad_options_are_one_line_errors(tmp_path):
    from lorafit.workflows.analyze import run_analyze

    save_llama_adapter(tmp_path / "a", rank=4)
    with pytest.raises(LorafitError, match="--truncate-rank: needs -o DIR") as error:
        run_analyze(tmp_path / "a", truncate_rank=2)
    assert error.value.exit_code == 2  # bad input
    with pytest.raises(LorafitError, match="--side: must be one of input, output"):
        run_analyze(tmp_path / "a", side="rows")
    with pytest.raises(LorafitError, match="--truncate-rank: must be between 1 and the adapter's rank 4, got 9"):
        run_analyze(tmp_path / "a", truncate_rank=9, output_dir=tmp_path / "out")
    with pytest.raises(LorafitError, match="missing: not an adapter directory"):
        run_analyze(tmp_path / "a", compare=tmp_path / "missing")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("model: tiny\n")
    with pytest.raises(LorafitError, match="run directory without adapter/"):
        run_analyze(run)


def test_overall_rank_advice_matches_truncation_energy(tmp_path):
    from lorafit.workflows.analyze import run_analyze

    save_llama_adapter(tmp_path / "a", rank=6, alpha=12.0, seed=4)
    report = run_analyze(tmp_path / "a")
    k = report["advice"]["overall_rank_for_90"]
    factors = read_factors(tmp_path / "a")
    kept = truncate_adapter(factors, k, tmp_path / f"r{k}")["energy_kept"]
    assert kept >= 0.90
    if k > 1:
        assert truncate_adapter(factors, k - 1, tmp_path / f"r{k - 1}")["energy_kept"] < 0.90
    assert k <= report["advice"]["rank_for_90"]
