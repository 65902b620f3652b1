"""Experiment 5: sequential operations, cost per layer and path length (Table 1 of the paper).

Table 1: a self-attention layer costs O(n^2 d) operations, O(1) sequential operations and a maximum path length of
O(1); a recurrent layer O(n d^2), O(n) and O(n). Measured on this CPU, one self-attention layer (this model's,
d_model 512, 8 heads, PyTorch's fused SDPA kernel as a built model uses, and the eager kernel that materialises the
n x n weights) against one `nn.LSTM` layer of the same width, batch 1, as n grows: forward and
forward+backward wall time (median and interquartile range of repeats), the multiply-adds each does by the
formulas (attention 4 n d^2 + 2 n^2 d, LSTM 8 n d^2) and the rate at which each achieves them (GMAC/s: the direct
picture of what n sequential steps cost), the speed-up from a second thread, and the path length at initialisation:
|d y_n / d x_1|, how much the last output depends on the first input.

    python -m experiments.sequential [--tiny]
"""

from __future__ import annotations

import statistics
import time

import torch

from experiments import common
from hf_vanilla_transformer import VanillaTransformerConfig
from hf_vanilla_transformer.modeling_vanilla_transformer import VanillaTransformerAttention


def attention_multiply_adds(n: int, d: int) -> int:
    """Q, K, V and output projections (4 n d^2) plus Q K^T and the weighted sum of V (2 n^2 d)."""
    return 4 * n * d * d + 2 * n * n * d


def lstm_multiply_adds(n: int, d: int) -> int:
    """Four gates, each an input and a recurrent d x d product per step: 8 n d^2."""
    return 8 * n * d * d


def seconds(function, repeats: int) -> tuple[float, float]:
    """Median and interquartile range of `repeats` timed calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return quartiles[1] if len(times) > 1 else times[0], quartiles[2] - quartiles[0]


def layers(d: int, heads: int):
    torch.manual_seed(0)
    config = VanillaTransformerConfig(vocab_size=8, d_model=d, d_ff=4, h=heads, dropout=0.0)
    config._attn_implementation = "sdpa"  # what a built model uses on CPU
    attention = VanillaTransformerAttention(config, layer_idx=0, is_causal=False, is_cross_attention=False).eval()
    return attention, torch.nn.LSTM(d, d, batch_first=True).eval()


def timings(lengths: list[int], d: int, heads: int, repeats: int) -> list[dict[str, float]]:
    attention, lstm = layers(d, heads)
    rows = []
    for n in lengths:
        x = torch.randn(1, n, d)
        row: dict[str, float] = {"n": n, "attention_macs": attention_multiply_adds(n, d),
                                 "lstm_macs": lstm_multiply_adds(n, d)}  # fmt: skip
        for name, layer in (("attention", lambda x: attention(x)[0]), ("lstm", lambda x: lstm(x)[0])):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with torch.no_grad():
                    row[f"{name}_forward_{threads}"], row[f"{name}_forward_iqr_{threads}"] = seconds(
                        lambda layer=layer, x=x: layer(x), repeats
                    )
            torch.set_num_threads(2)
            row[f"{name}_backward"], row[f"{name}_backward_iqr"] = seconds(
                lambda layer=layer, x=x: layer(x.requires_grad_()).sum().backward(), max(3, repeats // 2)
            )
            row[f"{name}_gmacs"] = row[f"{name}_macs"] / row[f"{name}_forward_2"] / 1e9
        # The n^2 term's cost depends on the kernel: eager materialises the n x n weights, SDPA fuses the softmax.
        attention.config._attn_implementation = "eager"
        with torch.no_grad():
            row["eager_forward_2"], row["eager_forward_iqr_2"] = seconds(lambda x=x: attention(x), repeats)
        attention.config._attn_implementation = "sdpa"
        row["eager_gmacs"] = row["attention_macs"] / row["eager_forward_2"] / 1e9
        rows.append(row)
    return rows


def path_gradient(n: int, d: int = 64, heads: int = 4, probes: int = 4) -> dict[str, float]:
    """|d y_n / d x_1| at initialisation (Xavier attention, PyTorch's LSTM initialisation), estimated as the mean
    over `probes` random unit vectors u of |d (u . y_n) / d x_1|, on unit-variance inputs."""
    attention, lstm = layers(d, heads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, d, generator=generator)
    result = {}
    for name, layer in (("attention", lambda x: attention(x)[0]), ("lstm", lambda x: lstm(x)[0])):
        norms = []
        for _ in range(probes):
            u = torch.randn(d, generator=generator)
            inputs = x.clone().requires_grad_()
            (layer(inputs)[0, -1] @ (u / u.norm())).backward()
            norms.append(inputs.grad[0, 0].norm().item())
        result[name] = sum(norms) / len(norms)
    return result


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    d, heads = (32, 4) if args.tiny else (512, 8)
    lengths = [8, 16] if args.tiny else [16, 64, 256, 1024, 2048, 4096]
    rows = timings(lengths, d, heads, repeats=3 if args.tiny else 9)
    crossover = next((r["n"] for r in rows if r["attention_forward_2"] > r["lstm_forward_2"]), None)
    eager_crossover = next((r["n"] for r in rows if r["eager_forward_2"] > r["lstm_forward_2"]), None)
    formula_crossover = 2 * d  # 4 n d^2 + 2 n^2 d = 8 n d^2 at n = 2d
    table = common.markdown_table(
        ["n", "attention fwd ms (IQR)", "eager attention fwd ms (IQR)", "LSTM fwd ms (IQR)", "LSTM / attention fwd",
         "LSTM / attention fwd+bwd", "MACs LSTM / attention", "attention GMAC/s", "eager GMAC/s", "LSTM GMAC/s",
         "2nd thread: attention", "2nd thread: LSTM"],
        [[r["n"], f"{1e3 * r['attention_forward_2']:.2f} ({1e3 * r['attention_forward_iqr_2']:.2f})",
          f"{1e3 * r['eager_forward_2']:.2f} ({1e3 * r['eager_forward_iqr_2']:.2f})",
          f"{1e3 * r['lstm_forward_2']:.2f} ({1e3 * r['lstm_forward_iqr_2']:.2f})",
          r["lstm_forward_2"] / r["attention_forward_2"], r["lstm_backward"] / r["attention_backward"],
          r["lstm_macs"] / r["attention_macs"], r["attention_gmacs"], r["eager_gmacs"], r["lstm_gmacs"],
          f"{r['attention_forward_1'] / r['attention_forward_2']:.2f}x", f"{r['lstm_forward_1'] / r['lstm_forward_2']:.2f}x"]
         for r in rows],
    )  # fmt: skip
    path_lengths = [4, 16, 64, 256] if not args.tiny else [4, 16]
    paths = {n: path_gradient(n) for n in path_lengths}
    path_table = common.markdown_table(["n", "attention |dy_n/dx_1|", "LSTM |dy_n/dx_1|"],
                                       [[n, p["attention"], p["lstm"]] for n, p in paths.items()])  # fmt: skip
    summary = common.markdown_table(
        ["", "n"],
        [["measured: self-attention's forward (SDPA) slower than the LSTM's from", crossover or f"> {lengths[-1]}"],
         ["measured: eager self-attention's forward slower than the LSTM's from", eager_crossover or f"> {lengths[-1]}"],
         [f"by the formulas: attention's multiply-adds exceed the LSTM's from (n = 2d, d = {d})", formula_crossover]],
    )  # fmt: skip
    plt = common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4))
    for name, label in (("attention", "self-attention (1 sequential op)"), ("lstm", "LSTM (n sequential ops)")):
        axes[0].plot(lengths, [1e3 * r[f"{name}_forward_2"] for r in rows], "o-", label=f"{label}, forward")
        axes[0].plot(lengths, [1e3 * r[f"{name}_backward"] for r in rows], "s--", label=f"{label}, fwd+bwd")
        axes[1].plot(
            lengths, [r[f"{name}_gmacs"] for r in rows], "o-", label=label + (", SDPA" if name == "attention" else "")
        )
        axes[2].plot(path_lengths, [paths[n][name] for n in path_lengths], "o-", label=label)
    axes[1].plot(lengths, [r["eager_gmacs"] for r in rows], "o:", label="self-attention, eager")
    axes[0].plot(lengths, [1e3 * r["eager_forward_2"] for r in rows], "o:", label="self-attention, eager, forward")
    axes[0].axvline(formula_crossover, color="gray", ls=":", label=f"n = 2d = {formula_crossover} (equal MACs)")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="ms (batch 1)",
                title=f"One layer, d = {d}, this CPU, 2 threads")  # fmt: skip
    axes[1].set(xscale="log", xlabel="sequence length n", ylabel="achieved GMAC/s (forward)",
                title="How well each uses the cores")  # fmt: skip
    axes[2].set(xscale="log", yscale="log", xlabel="n", ylabel="|d y_n / d x_1|", title="Path length at init (d 64)")
    for axis in axes:
        axis.legend(fontsize=7)
    answers = [f"n = {r['n']}: the LSTM's forward takes {r['lstm_forward_2'] / r['attention_forward_2']:.2f}x "
               f"attention's time for {r['lstm_macs'] / r['attention_macs']:.2f}x its multiply-adds "
               f"({r['lstm_gmacs']:.1f} vs {r['attention_gmacs']:.1f} GMAC/s; eager attention {r['eager_gmacs']:.1f})"
               for r in (rows[0], rows[-1])] + [
               f"|dy_n/dx_1| from n = {path_lengths[0]} to {path_lengths[-1]}: attention "
               f"{paths[path_lengths[0]]['attention'] / paths[path_lengths[-1]]['attention']:.3g}x smaller; LSTM "
               + (f"{paths[path_lengths[0]]['lstm'] / paths[path_lengths[-1]]['lstm']:.3g}x smaller"
                  if paths[path_lengths[-1]]['lstm'] > 0 else "underflows to 0 in float32")]  # fmt: skip
    common.save(
        "sequential",
        {f"One layer, d = {d}, batch 1 (2 threads unless named; median of repeats)": table, "Crossover": summary,
         "Path length at initialisation (d 64, 4 heads)": path_table},
        {"rows": rows, "measured_crossover": crossover, "eager_crossover": eager_crossover,
         "formula_crossover": formula_crossover, "paths": paths},
        figure, args.out, answers)  # fmt: skip


if __name__ == "__main__":
    main()
