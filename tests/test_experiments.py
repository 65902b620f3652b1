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
from conftest import random_batch, tiny_model

from experiments import common, layer_norm, positions, questions, residuals, scaling, sequential
from hf_vanilla_transformer.modeling_vanilla_transformer import sinusoidal_position_encoding

ROOT = Path(__file__).resolve().parent.parent
RESULT_NAMES = ("scaling", "positions", "layer_norm", "residuals", "sequential", "table3", "vocabulary", "averaging",
                "smoothing", "decoding", "heads")  # fmt: skip


@pytest.fixture
def small_corpus(monkeypatch):
    """The experiments' corpus at its --tiny size (1,500 pairs, the same BPE 300): the init-time claims hold on it."""
    monkeypatch.setattr(common, "tiny", True)


# ---- the init-time findings of the experiments, kept true by CI ------------------------------------------------
@pytest.mark.parametrize("d_k", [64, 256, 1024])
def test_unscaled_scores_have_variance_d_k_and_scaled_ones_variance_one(d_k):
    """Footnote 4: q.k of unit-variance components has variance d_k; / sqrt(d_k) brings it to 1 (the model's own
    attention layer and Xavier initialisation, 8 x 64 x 64 scores): within 10% for d_k >= 64."""
    unscaled = scaling.at_initialisation(d_k, scaled=False)
    scaled = scaling.at_initialisation(d_k, scaled=True)
    assert unscaled["score_variance"] / d_k == pytest.approx(1.0, rel=0.10)
    assert scaled["score_variance"] == pytest.approx(1.0, rel=0.10)
    assert unscaled["entropy"] < scaled["entropy"] < math.log(64)


def test_scaled_attention_has_no_saturated_rows_and_unscaled_ever_more_as_d_k_grows():
    """The per-row form of footnote 4's "extremely small gradients": a saturated row (largest weight > 0.9999)
    passes back no gradient. None when scaled, at any d_k; unscaled, a share that grows with d_k."""
    shares = {d_k: scaling.at_initialisation(d_k, scaled=False)["saturated_rows"] for d_k in (16, 64, 256, 1024)}
    assert all(scaling.at_initialisation(d_k, scaled=True)["saturated_rows"] == 0 for d_k in shares)
    assert shares[16] < shares[64] < shares[256] < shares[1024]
    assert shares[64] > 0 and shares[1024] > 0.3


def test_jacobian_norms_are_the_softmax_jacobians():
    scores = torch.randn(5, 7, dtype=torch.float64)
    weights = torch.softmax(scores, -1)
    for row in range(5):
        jacobian = torch.autograd.functional.jacobian(lambda s: torch.softmax(s, -1), scores[row])
        assert scaling.jacobian_norms(weights)[row].item() == pytest.approx(jacobian.norm().item(), rel=1e-9)
    assert scaling.jacobian_norms(torch.eye(4)).abs().max() < 1e-6  # one-hot rows pass nothing back


def test_the_control_starts_where_the_scaled_model_starts():
    """scaling's control (no 1/sqrt(d_k), W^Q 1/sqrt(d_k) smaller) computes the scaled model's output at init."""
    scaled, control = tiny_model(), tiny_model()
    scaling.unscaled_small_query(control)
    input_ids, attention_mask, labels = random_batch(vocab_size=128)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    torch.testing.assert_close(control(**batch).logits, scaled(**batch).logits, rtol=1e-4, atol=1e-5)
    scaling.unscaled(scaled)
    assert not torch.allclose(control(**batch).logits, scaled(**batch).logits, atol=1e-3)


def test_post_ln_gradients_grow_toward_the_output_and_pre_ln_ones_do_not(small_corpus):
    """Xiong et al. (2020) Fig. 3 at 6 + 6 layers: the decoder's last-layer FFN gradient over its first > 2 for
    post-LN (the paper's), < 1.5 for pre-LN."""
    post = layer_norm.layer_gradient_norms(norm_first=False)["decoder"]
    pre = layer_norm.layer_gradient_norms(norm_first=True)["decoder"]
    assert post[-1] / post[0] > 2
    assert pre[-1] / pre[0] < 1.5


def test_without_residuals_tokens_become_indistinguishable_after_two_layers(small_corpus):
    """Rank collapse (Dong et al. 2021): without residual connections the encoder's token-specific share is < 0.05
    after 2 layers, post-LN or pre-LN; with them it stays; after 6 layers pre-LN keeps more than post-LN."""
    post, pre = residuals.token_distinctness(False, True, 6), residuals.token_distinctness(True, True, 6)
    for norm_first in (False, True):
        assert residuals.token_distinctness(norm_first, False, 2)[1] < 0.05
    assert post[1] > 0.2 and pre[1] > 0.2
    assert pre[5] > post[5]


@pytest.mark.parametrize("k", [1, 7, 100])
def test_pe_p_plus_k_is_a_rotation_of_pe_p_exactly(k):
    """§3.5: PE(p + k) = M_k PE(p) with one M_k for every p, to 1e-10 (float64, p < 1000, d_model 512)."""
    assert positions.rotation_error(k) < 1e-10
    assert positions.rotation_error(k, positions=50, d_model=6) < 1e-10
    # M_k is orthogonal and M_a M_b = M_(a+b)
    m = positions.rotation(k, 64)
    torch.testing.assert_close(m @ m.T, torch.eye(64, dtype=torch.float64))
    torch.testing.assert_close(positions.rotation(3, 64) @ m, positions.rotation(k + 3, 64))


def test_the_float64_formula_is_the_models_encoding():
    p = torch.arange(300)
    model = sinusoidal_position_encoding(p, 512).double()
    assert (model - positions.paper_encoding(p, 512)).abs().max() < 1e-4  # float32 angles up to 300 rad


def test_the_multiply_add_formulas_match_the_layers_weights():
    d = 48
    lstm = torch.nn.LSTM(d, d)
    # per step: one input and one recurrent product through (4d x d) matrices
    assert sequential.lstm_multiply_adds(10, d) == 10 * (lstm.weight_ih_l0.numel() + lstm.weight_hh_l0.numel())
    assert sequential.attention_multiply_adds(2 * d, d) == sequential.lstm_multiply_adds(2 * d, d)
    assert sequential.attention_multiply_adds(2 * d + 1, d) > sequential.lstm_multiply_adds(2 * d + 1, d)


def test_the_lstm_forgets_the_first_input_and_attention_does_not():
    """Table 1's maximum path length at initialisation: |dy_n/dx_1| of the LSTM falls by orders of magnitude from
    n = 4 to 64, one attention layer's only as its weights spread over n positions."""
    short, long = sequential.path_gradient(4), sequential.path_gradient(64)
    assert short["lstm"] / long["lstm"] > 1e4
    assert short["attention"] / long["attention"] < 64


# ---- the measurement code on known inputs ---------------------------------------------------------------------
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


@pytest.mark.parametrize("norm_first", [False, True])
def test_removing_residuals_leaves_the_sublayer_and_its_norm(norm_first):
    model = tiny_model(norm_first=norm_first)
    residual = model.model.encoder.layers[0].ffn_residual
    ffn = model.model.encoder.layers[0].ffn
    x = torch.randn(2, 5, 32)
    norm = residual.layer_norm
    torch.testing.assert_close(residual(x, ffn), x + ffn(norm(x)) if norm_first else norm(x + ffn(x)))
    residuals.remove_residuals(model)
    torch.testing.assert_close(residual(x, ffn), ffn(norm(x)) if norm_first else norm(ffn(x)))
    other = tiny_model(norm_first=norm_first).model.encoder.layers[0].ffn_residual  # a fresh model keeps the paper's
    torch.testing.assert_close(
        other(x, ffn), x + ffn(other.layer_norm(x)) if norm_first else other.layer_norm(x + ffn(x))
    )


def test_zeroing_a_head_zeroes_its_slice_of_the_concatenation():
    model = tiny_model()
    layer = model.model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    seen = []
    hook = layer.o_proj.register_forward_pre_hook(lambda m, i: seen.append(i[0].clone()))
    full = layer(x)[0]
    handle = questions.zero_head(layer, 2)
    ablated = layer(x)[0]
    handle.remove()
    hook.remove()
    concatenation = seen[0].clone()
    concatenation[..., 2 * layer.d_v : 3 * layer.d_v] = 0
    torch.testing.assert_close(ablated, layer.o_proj(concatenation))
    assert not torch.allclose(ablated, full)
    torch.testing.assert_close(layer(x)[0], full)  # removed: the head is back


def test_expected_calibration_error_of_known_predictions():
    confidence = torch.tensor([0.95] * 100 + [0.55] * 100)
    calibrated = torch.tensor([1.0] * 95 + [0.0] * 5 + [1.0] * 55 + [0.0] * 45)
    assert questions.expected_calibration_error(confidence, calibrated) == pytest.approx(0.0, abs=1e-4)
    overconfident = torch.tensor([1.0] * 75 + [0.0] * 25 + [1.0] * 35 + [0.0] * 65)  # 20 points below each bin
    assert questions.expected_calibration_error(confidence, overconfident) == pytest.approx(20.0, abs=1e-4)


def test_the_learning_rate_is_transformers_schedule():
    """common.learning_rate, the x axis of the averaging figure, is the schedule the runs train with."""
    from transformers import get_inverse_sqrt_schedule

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    schedule = get_inverse_sqrt_schedule(optimizer, num_warmup_steps=100, timescale=100)
    rates = {}
    for step in range(1, 1201):
        optimizer.step()
        schedule.step()
        rates[step] = optimizer.param_groups[0]["lr"]  # the rate when the checkpoint of this step is taken
    for step in (10, 100, 300, 1200):
        assert common.learning_rate(step, 3e-3, 100) == pytest.approx(rates[step], rel=1e-9)


def test_number_lists_and_item_accuracy():
    import random

    from num2words import num2words

    source, target = positions.number_list(random.Random(3), 4)
    assert len(source.split(", ")) == len(target.split(", ")) == 4
    assert [num2words(n, lang="de") for n in map(_english_value, source.split(", "))] == target.split(", ")
    assert positions.item_accuracy(["a, b, c", "a"], ["a, x, c", "a, b"]) == pytest.approx(100 * 3 / 5)


def _english_value(words: str) -> int:
    from hf_vanilla_transformer_training.data import english_number

    return english_number(words)


def test_empty_sources_leave_only_the_target_language_model(small_corpus):
    data, blank = common.corpus(), common.blank_sources(True)
    eos = [data.tokenizer.eos_token_id]
    assert all(source == eos for source, _ in blank.train + blank.dev)
    assert [t for _, t in blank.train] == [t for _, t in data.train]


@pytest.mark.parametrize(
    "a, b, finding",
    [([1.0, 1.1], [2.0, 2.1], True),  # apart, difference 1.0 >> 2 x SD 0.07
     ([1.0, 1.5], [1.4, 2.0], False),  # ranges overlap
     ([0.0, 1.0], [1.01, 2.01], False),  # apart, but 1.01 < 2 x pooled SD 0.71
     ([1.0], [2.0], False),  # one seed per arm is never a finding
     ([1.0, 1.1], [math.inf, math.inf], True)],  # diverged against trained
)  # fmt: skip
def test_the_finding_criterion(a, b, finding):
    assert common.compare(a, b)["finding"] is finding


@pytest.mark.slow
def test_every_experiment_runs_in_its_tiny_version(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "experiments", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name in RESULT_NAMES:
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


def test_experiments_command_refuses_an_unknown_name_before_running_anything():
    result = subprocess.run([sys.executable, "-m", "experiments", "scaling", "scalling", "--tiny"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2
    assert "unknown experiment(s) scalling: expected some of scaling, positions" in result.stderr
    assert "=== experiment" not in result.stdout
