"""End-to-end runs of training/train.py at tiny sizes: the Hub-ready result, two processes under accelerate, and
resuming after a kill. Each compares against an independent run of the same recipe."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer_training.data import DEMO_CATEGORIES
from hf_vanilla_transformer_training.train import category_key

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--preset", "tiny", "--vocab_size", "200", "--demo_pairs", "1400", "--max_tokens", "800",
    "--warmup_steps", "4", "--lr_scale", "4", "--logging_steps", "1", "--disable_tqdm", "true",
]  # fmt: skip


def run(args: list[str], launcher: list[str] | None = None, wait: bool = True, **kwargs):
    # The installed package (`pip install -e .`): the repository's training/ folder is hf_vanilla_transformer_training.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    command = (launcher or [sys.executable]) + ["-m", "hf_vanilla_transformer_training.train", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def final_weights(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    model = VanillaTransformerForConditionalGeneration.from_pretrained(output_dir / f"checkpoint-{step}")
    return model.state_dict()


def fixed_batch_loss(output_dir: Path, step: int) -> float:
    model = VanillaTransformerForConditionalGeneration.from_pretrained(output_dir / f"checkpoint-{step}").eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 200, (4, 9), generator=generator)
    labels = torch.randint(4, 200, (4, 7), generator=generator)
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


@pytest.mark.slow
def test_a_tiny_run_writes_a_hub_ready_model_and_scores_it(tmp_path):
    out = tmp_path / "run"
    result = run([*TINY, "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--eval_steps", "3",
                  "--max_eval_samples", "20", "--average_last", "2", "--max_predict_samples", "30"])  # fmt: skip
    assert "[test] 30 pairs, averaged model of 2 checkpoints" in result.stdout
    model_dir = out / "model"
    names = set(os.listdir(model_dir))
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_vanilla_transformer.py",
            "configuration_vanilla_transformer.py", "generation_vanilla_transformer.py",
            "loss_vanilla_transformer.py", "compatibility_vanilla_transformer.py", "tokenizer.json", "tokenizer_config.json",
            "learning_curve.png", "results.json"} <= names  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["averaged_checkpoints"] == ["checkpoint-4", "checkpoint-6"]
    assert {"bleu", "chrf", "exact_match"} <= set(results["test"]) and results["test"]["pairs"] == 30
    assert any("eval_bleu" in entry for entry in results["log_history"])
    # The demo's categories: per category in the test scores (pooled by their pair counts, the overall exact match),
    # in the validation log, and printed as a table at the end; the corpus and the BPE say what they are doing.
    by_category, pairs = results["test"]["exact_match_by_category"], results["test"]["pairs_by_category"]
    assert set(by_category) <= set(DEMO_CATEGORIES) and sum(pairs.values()) == 30
    assert sum(by_category[c] * pairs[c] for c in by_category) / 30 == pytest.approx(results["test"]["exact_match"])
    assert any("eval_" + category_key("date, full") in entry for entry in results["log_history"])
    for category in by_category:
        assert f"  {category:22s} {pairs[category]:6d}" in result.stdout
    assert "[data] building the demo corpus" in result.stdout and "[tokenizer] done" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    assert tokenizer.pad_token_id == model.config.pad_token_id and len(tokenizer) <= model.config.vocab_size
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert (
        generation["num_beams"] == 4 and generation["length_penalty_type"] == "gnmt" and "max_length" not in generation
    )
    # The averaged model is the mean of the last two checkpoints.
    averaged = model.state_dict()
    a, b = final_weights(out, 4), final_weights(out, 6)
    for name in ("model.encoder.layers.0.self_attn.q_proj.weight", "model.encoder.embeddings.embed_tokens.weight"):
        torch.testing.assert_close(averaged[name], (a[name] + b[name]) / 2)


LAUNCHERS = {
    # accelerate 1.15 runs `--cpu --num_processes 2` as one process (its CPU multi-process path needs mpirun);
    # `--multi_gpu` on a machine without GPUs starts two processes that all-reduce over gloo.
    "accelerate": [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu",
                   "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, launcher):
    """Two data-parallel processes with one batch each per step see the same global batch as one process that
    accumulates two: with dropout off, the weights and losses agree to float tolerance."""
    common = [*TINY, "--max_steps", "4", "--save_steps", "4", "--eval_steps", "1000", "--skip_test",
              "--average_last", "1", "--config_overrides", '{"dropout": 0.0}']  # fmt: skip
    run([*common, "--output_dir", str(tmp_path / "one"), "--gradient_accumulation_steps", "2"])
    result = run([*common, "--output_dir", str(tmp_path / "two")], launcher=LAUNCHERS[launcher])
    assert "[train] 2 processes x 1 accumulation steps: 400 tokens per batch" in result.stdout
    state = lambda d: json.loads((d / "checkpoint-4" / "trainer_state.json").read_text())  # noqa: E731
    logged = lambda d: [(e["loss"], e["grad_norm"]) for e in state(d)["log_history"] if "loss" in e]  # noqa: E731
    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert len(one) == len(two) == 4
    for (loss_1, norm_1), (loss_2, norm_2) in zip(one, two, strict=True):
        assert loss_1 == pytest.approx(loss_2, rel=1e-4) and norm_1 == pytest.approx(norm_2, rel=1e-4)
    weights_1, weights_2 = final_weights(tmp_path / "one", 4), final_weights(tmp_path / "two", 4)
    for name in weights_1:
        torch.testing.assert_close(weights_1[name], weights_2[name], atol=1e-4, rtol=1e-4)
    assert fixed_batch_loss(tmp_path / "one", 4) == pytest.approx(fixed_batch_loss(tmp_path / "two", 4), abs=1e-4)


@pytest.mark.slow
def test_resuming_after_a_kill_ends_where_an_uninterrupted_run_ends(tmp_path):
    common = [*TINY, "--max_steps", "10", "--save_steps", "2", "--eval_steps", "1000", "--skip_test",
              "--average_last", "1", "--resume_from_checkpoint", "last"]  # fmt: skip
    run([*common, "--output_dir", str(tmp_path / "straight")])

    interrupted = tmp_path / "interrupted"
    process = run([*common, "--output_dir", str(interrupted)], wait=False)
    deadline = time.monotonic() + 300
    while not (interrupted / "checkpoint-4" / "trainer_state.json").is_file():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "checkpoint-10").exists()
    result = run([*common, "--output_dir", str(interrupted)])
    assert "[train] resuming from" in result.stdout

    straight, resumed = final_weights(tmp_path / "straight", 10), final_weights(interrupted, 10)
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], atol=1e-6, rtol=1e-5)
    assert fixed_batch_loss(tmp_path / "straight", 10) == pytest.approx(fixed_batch_loss(interrupted, 10), abs=1e-6)
    # Rerunning a finished run trains nothing more (the Trainer, resumed at max_steps, would take a step).
    again = run([*common, "--output_dir", str(interrupted)])
    assert "checkpoint-10 is at max_steps: nothing to train" in again.stdout
    assert not (interrupted / "checkpoint-11").exists()
    assert all(torch.equal(resumed[name], final_weights(interrupted, 10)[name]) for name in resumed)


def loadable(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    load_file(checkpoint / "model.safetensors")
    json.loads((checkpoint / "trainer_state.json").read_text())
    torch.load(checkpoint / "optimizer.pt", weights_only=True)
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    from hf_vanilla_transformer_training.average_checkpoints import complete_checkpoints

    common = [*TINY, "--max_steps", "14", "--save_steps", "1", "--eval_steps", "1000", "--skip_test",
              "--average_last", "2", "--resume_from_checkpoint", "last"]  # fmt: skip
    run([*common, "--output_dir", str(tmp_path / "straight")])
    faulty = tmp_path / "faulty"
    rng = random.Random(0)
    kills = 0
    for _attempt in range(4):
        process = run([*common, "--output_dir", str(faulty)], wait=False)

        # Wait until training is under way (a checkpoint beyond the resumed one), then kill at a random moment.
        def latest():
            found = complete_checkpoints(faulty)
            return int(found[-1].name.split("-")[1]) if found else 0

        start = latest()
        deadline = time.monotonic() + 120
        while latest() <= start and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        for checkpoint in complete_checkpoints(faulty):  # every checkpoint that looks complete is complete
            assert loadable(checkpoint), checkpoint
    assert kills >= 2
    final = run([*common, "--output_dir", str(faulty)])
    found = sorted(p.name for p in faulty.iterdir())
    assert (faulty / "checkpoint-14" / "config.json").is_file(), (found, final.stdout[-3000:])
    straight, resumed = final_weights(tmp_path / "straight", 14), final_weights(faulty, 14)
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], atol=1e-6, rtol=1e-5)
    assert fixed_batch_loss(tmp_path / "straight", 14) == pytest.approx(fixed_batch_loss(faulty, 14), abs=1e-6)


@pytest.mark.slow
def test_two_runs_with_one_seed_are_identical(tmp_path):
    common = [*TINY, "--max_steps", "3", "--save_steps", "3", "--eval_steps", "1000", "--skip_test",
              "--average_last", "1"]  # fmt: skip
    run([*common, "--output_dir", str(tmp_path / "a")])
    run([*common, "--output_dir", str(tmp_path / "b")])
    a, b = final_weights(tmp_path / "a", 3), final_weights(tmp_path / "b", 3)
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.slow
def test_the_weight_seed_and_the_corpus_seed_are_independent(tmp_path):
    """`--seed` draws the initial weights (and dropout) only; `--data_seed` the corpus, its split, the BPE and the
    batch order. One step at the schedule's step 0 (rate 0) leaves the initial weights: another weight seed keeps
    the tokenizer and changes the weights, another corpus seed changes the tokenizer and keeps the weights."""
    common = [*TINY, "--max_steps", "1", "--save_steps", "1", "--eval_steps", "1000", "--skip_test", "--average_last",
              "1"]  # fmt: skip
    runs = {"a": ("0", "0"), "b": ("1", "0"), "c": ("0", "1")}
    for name, (seed, data_seed) in runs.items():
        run([*common, "--output_dir", str(tmp_path / name), "--seed", seed, "--data_seed", data_seed])
    vocab = {name: (tmp_path / name / "tokenizer" / "tokenizer.json").read_text() for name in runs}
    assert vocab["a"] == vocab["b"] != vocab["c"]
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    weights = {run_name: final_weights(tmp_path / run_name, 1)[name] for run_name in runs}
    assert not torch.equal(weights["a"], weights["b"]) and torch.equal(weights["a"], weights["c"])


def test_an_unwritable_output_folder_fails_before_training(tmp_path):
    from hf_vanilla_transformer_training.train import main

    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit, match=r"Cannot write to the output folder .*a_file/run"):
        main(["--output_dir", str(tmp_path / "a_file" / "run"), *TINY, "--max_steps", "2"])


def test_too_little_disk_space_fails_before_training(tmp_path, monkeypatch):
    import shutil

    from hf_vanilla_transformer_training.train import main

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(SystemExit, match=r"Not enough disk space in .*: 10,000 bytes free, about [\d,]+ needed"):
        main(["--output_dir", str(tmp_path / "run"), *TINY, "--max_steps", "2"])
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.slow
def test_a_full_disk_at_a_save_keeps_earlier_checkpoints_and_resumes(tmp_path, monkeypatch):
    import errno

    import transformers.modeling_utils as modeling_utils

    from hf_vanilla_transformer_training.average_checkpoints import complete_checkpoints
    from hf_vanilla_transformer_training.train import main

    out = tmp_path / "run"
    args = [*TINY, "--output_dir", str(out), "--max_steps", "6", "--save_steps", "2", "--eval_steps", "1000",
            "--skip_test", "--average_last", "2", "--resume_from_checkpoint", "last"]  # fmt: skip
    real_save, calls = modeling_utils.safe_save_file, []

    def full_disk_on_the_third_save(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # checkpoint-6: the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*a, **k)

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk_on_the_third_save)
    with pytest.raises(OSError, match=r"Saving checkpoint-6 .* failed \(No space left on device\); is the disk full\? The complete "
                       r"checkpoints \['checkpoint-2', 'checkpoint-4'\] are intact"):  # fmt: skip
        main(args)
    assert [c.name for c in complete_checkpoints(out, for_resume=True)] == ["checkpoint-2", "checkpoint-4"]
    assert all(loadable(c) for c in complete_checkpoints(out))
    monkeypatch.setattr(modeling_utils, "safe_save_file", real_save)
    results = main(args)  # disk freed: the rerun resumes from checkpoint-4 and finishes
    assert results["steps"] == 6 and (out / "checkpoint-6" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_a_half_written_newest_checkpoint_is_removed_and_redone(tmp_path):
    """A save killed while writing trainer_state.json leaves a folder with every file. Saving into it again would
    not change the folder's mtime, and the Trainer's mtime-ordered rotation would take the new checkpoint for the
    oldest and delete it (seen in CI under load)."""
    common = [*TINY, "--max_steps", "6", "--save_steps", "1", "--eval_steps", "1000", "--skip_test",
              "--resume_from_checkpoint", "last"]  # fmt: skip
    run([*common, "--average_last", "5", "--output_dir", str(tmp_path / "straight")])
    broken = tmp_path / "broken"
    run([*common, "--average_last", "5", "--output_dir", str(broken)])  # keeps checkpoint-1 ... checkpoint-6
    state = broken / "checkpoint-6" / "trainer_state.json"
    state.write_text(state.read_text()[:50])  # cut off mid-write
    os.utime(broken / "checkpoint-6", (time.time() - 3600, time.time() - 3600))
    result = run([*common, "--average_last", "1", "--output_dir", str(broken)])  # keeps 2: the rotation runs
    assert "removing the incomplete checkpoint checkpoint-6" in result.stdout
    assert "[train] resuming from" in result.stdout and "checkpoint-5" in result.stdout
    straight, redone = final_weights(tmp_path / "straight", 6), final_weights(broken, 6)
    assert all(torch.equal(straight[name], redone[name]) for name in straight)
