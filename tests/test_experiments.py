"""experiments/: the measurement code checked on known inputs, and every experiment's tiny version (seconds).

The full runs (`make experiments`) write the README's figures; here only that the code measures what it says."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from experiments import positions, residuals, scaling, sequential
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("d_k", [16, 64, 256])
def test_unscaled_scores_have_variance_d_k_and_scaled_ones_variance_one(d_k):
    """Footnote 4: q.k of unit-variance components has variance d_k; / sqrt(d_k) brings it to 1 (the model's layer,
    its Xavier initialisation, 8 x 64 x 64 scores: sampling error of a few percent)."""
    unscaled = scaling.at_initialisation(d_k, scaled=False)
    scaled = scaling.at_initialisation(d_k, scaled=True)
    assert unscaled["score_variance"] == pytest.approx(d_k, rel=0.15)
    assert scaled["score_variance"] == pytest.approx(1.0, rel=0.15)
    assert unscaled["entropy"] < scaled["entropy"] < math.log(64)


def test_entropy_of_known_distributions():
    assert scaling.entropy(torch.full((3, 64), 1 / 64)).item() == pytest.approx(math.log(64))
    assert scaling.entropy(torch.eye(5)).item() == pytest.approx(0.0, abs=1e-6)


def test_the_unscaled_variant_computes_softmax_of_qk_without_the_division():
    model = tiny_model()
    model.config._attn_implementation = "eager"
    scaling.unscaled(model)
    layer = model.model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    q = layer.q_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    k = layer.k_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    v = layer.v_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    expected = layer.o_proj((torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(layer(x)[0], expected)


@pytest.mark.parametrize("k", [1, 7, 100])
def test_pe_p_plus_k_is_a_rotation_of_pe_p_exactly(k):
    """§3.5: PE(p + k) = M_k PE(p) with one M_k for every p, to 1e-6 (float64, p < 1000, d_model 512)."""
    assert positions.rotation_error(k) < 1e-6
    assert positions.rotation_error(k, positions=50, d_model=6) < 1e-6
    # M_k is orthogonal and M_a M_b = M_(a+b)
    m = positions.rotation(k, 64)
    torch.testing.assert_close(m @ m.T, torch.eye(64, dtype=torch.float64))
    torch.testing.assert_close(positions.rotation(3, 64) @ m, positions.rotation(k + 3, 64))


def test_the_float64_formula_is_the_models_encoding():
    p = torch.arange(300)
    model = sinusoidal_position_encoding(p, 512).double()
    assert (model - positions.paper_encoding(p, 512)).abs().max() < 1e-4  # float32 angles up to 300 rad


def test_removing_residuals_leaves_layer_norm_of_the_sublayer():
    model = tiny_model()
    residual = model.model.encoder.layers[0].ffn_residual
    ffn = model.model.encoder.layers[0].ffn
    x = torch.randn(2, 5, 32)
    with_skip = residual(x, ffn)
    torch.testing.assert_close(with_skip, residual.layer_norm(x + ffn(x)))
    residuals.remove_residuals(model)
    torch.testing.assert_close(residual(x, ffn), residual.layer_norm(ffn(x)))
    other = tiny_model().model.encoder.layers[0].ffn_residual  # a fresh model keeps the paper's path
    torch.testing.assert_close(other(x, ffn), other.layer_norm(x + ffn(x)))


def test_the_multiply_add_formulas_match_the_layers_weights():
    d = 48
    lstm = torch.nn.LSTM(d, d)
    # per step: one input and one recurrent product through (4d x d) matrices
    assert sequential.lstm_multiply_adds(10, d) == 10 * (lstm.weight_ih_l0.numel() + lstm.weight_hh_l0.numel())
    assert sequential.attention_multiply_adds(2 * d, d) == sequential.lstm_multiply_adds(2 * d, d)
    assert sequential.attention_multiply_adds(2 * d + 1, d) > sequential.lstm_multiply_adds(2 * d + 1, d)


@pytest.mark.slow
def test_every_experiment_runs_in_its_tiny_version(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "experiments", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("scaling", "positions", "layer_norm", "residuals", "sequential", "table3"):
        table = (tmp_path / f"{name}.md").read_text()
        assert table.count("\n|") >= 3, name
        assert (tmp_path / f"{name}.png").stat().st_size > 5000, name
        json.loads((tmp_path / f"{name}.json").read_text())
    assert "[experiments] all:" in result.stdout


def _demo_seeds_row(exact_by_category: dict[str, float], pairs: dict[str, int], last: float, spikes=()):
    total = sum(pairs.values())
    exact = sum(exact_by_category[c] * pairs[c] for c in pairs) / total
    test = {"exact_match": exact, "chrf": 99.5, "bleu": 99.5, "pairs": total,
            "exact_match_by_category": exact_by_category, "pairs_by_category": pairs}  # fmt: skip
    return {"corpus_seed": 0, "weight_seed": 0, "test": test, "last_checkpoint": {"exact_match": last},
            "converged_by": 0.2, "loss_spikes": list(spikes), "train_seconds": 1.0}  # fmt: skip


def test_the_demo_seeds_targets_pool_the_numbers_and_fail_when_a_run_misses_them():
    """experiments/demo_seeds.py: the floor applies to numbers (the digit-count categories pooled by their pair
    counts), full, long and medium dates; each target is judged on every run."""
    from experiments import demo_seeds

    pairs = {"number, 1-3 digits": 10, "number, 4 digits": 90, "date, full": 100, "date, long": 100,
             "date, medium": 100}  # fmt: skip
    good = {"number, 1-3 digits": 0.0, "number, 4 digits": 100.0, "date, full": 100.0, "date, long": 99.0,
            "date, medium": 100.0}  # fmt: skip
    assert demo_seeds.floor_categories(_demo_seeds_row(good, pairs, 99.0)["test"]) == {
        "numbers": pytest.approx(90.0), "date, full": 100.0, "date, long": 99.0, "date, medium": 100.0}  # fmt: skip
    small_ok = {**good, "number, 1-3 digits": 50.0}  # numbers pooled: (5 + 90) / 100 = 95%
    rows = [_demo_seeds_row(small_ok, pairs, 98.0), _demo_seeds_row(small_ok, pairs, 98.0)]
    _, data = demo_seeds.summarise(rows)
    assert all(data["checks"].values()), data["checks"]
    weak = {**small_ok, "date, medium": 90.0}
    _, data = demo_seeds.summarise([rows[0], _demo_seeds_row(weak, pairs, 97.0, spikes=[{"step": 900}])])
    failed = {name for name, ok in data["checks"].items() if not ok}
    assert any(name.startswith("every category") for name in failed)
    assert any(name.startswith("spread") for name in failed) and "no loss spike after the warm-up" in failed
    assert any(name.startswith("averaged") for name in failed)  # 96.0 against its last checkpoint's 97.0
    assert any(name.startswith("every run") for name in failed) and any(name.startswith("mean") for name in failed)
    assert not any(name.startswith("chrF") for name in failed)


@pytest.mark.parametrize(
    "argv, message",
    [(["--parallel", "0"], "--parallel: 0: expected an integer >= 1"),
     (["--weight_seeds", "0", "0"], "--weight_seeds 0 0: a seed twice would share its run folder"),
     (["--paralel", "3", "--", "--max_steps", "5"], "unrecognized arguments: --paralel 3")],
)  # fmt: skip
def test_demo_seeds_refuses_bad_options_before_starting_a_run(argv, message, monkeypatch, capsys):
    from experiments import demo_seeds

    started = []
    monkeypatch.setattr(demo_seeds, "run_one", lambda *args: started.append(args))
    monkeypatch.setattr(sys, "argv", ["demo_seeds", *argv])
    with pytest.raises(SystemExit):
        demo_seeds.main()
    assert message in capsys.readouterr().err and not started
