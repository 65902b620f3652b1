"""Experiment 5: sequential operations and cost per layer (Table 1 of the paper).

Table 1: a self-attention layer costs O(n^2 d) operations and O(1) sequential operations; a recurrent layer
O(n d^2) and O(n) sequential operations, so self-attention is cheaper when n < d, "which is most often the case".
Measured: the forward wall time of one self-attention layer (this model's, d_model 512, 8 heads) and of one
`nn.LSTM` layer of the same width, batch 1, as the sequence length n grows; the multiply-adds each does by the
formulas (attention 4 n d^2 + 2 n^2 d, LSTM 8 n d^2); and where the n^2 term overtakes. Wall times are of this CPU
(2 cores), medians of repeated runs.

    python -m experiments.sequential [--tiny]
"""

from __future__ import annotations

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


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def timings(lengths: list[int], d: int, heads: int, repeats: int) -> list[dict[str, float]]:
    torch.manual_seed(0)
    config = VanillaTransformerConfig(vocab_size=8, d_model=d, d_ff=4, h=heads, dropout=0.0)
    attention = VanillaTransformerAttention(config, layer_idx=0, is_causal=False, is_cross_attention=False).eval()
    lstm = torch.nn.LSTM(d, d, batch_first=True).eval()
    rows = []
    for n in lengths:
        x = torch.randn(1, n, d)
        rows.append({
            "n": n,
            "attention_seconds": median_seconds(lambda x=x: attention(x), repeats),
            "lstm_seconds": median_seconds(lambda x=x: lstm(x), repeats),
            "attention_macs": attention_multiply_adds(n, d),
            "lstm_macs": lstm_multiply_adds(n, d),
        })  # fmt: skip
    return rows


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    d, heads = (32, 4) if args.tiny else (512, 8)
    lengths = [8, 16] if args.tiny else [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    rows = timings(lengths, d, heads, repeats=3 if args.tiny else 7)
    crossover = next((r["n"] for r in rows if r["attention_seconds"] > r["lstm_seconds"]), None)
    formula_crossover = 2 * d  # 4 n d^2 + 2 n^2 d = 8 n d^2 at n = 2d
    table = common.markdown_table(
        ["n", "self-attention ms", "LSTM ms", "LSTM / attention", "attention MACs (M)", "LSTM MACs (M)",
         "sequential ops attention / LSTM"],
        [[r["n"], 1e3 * r["attention_seconds"], 1e3 * r["lstm_seconds"], r["lstm_seconds"] / r["attention_seconds"],
          r["attention_macs"] / 1e6, r["lstm_macs"] / 1e6, f"1 / {r['n']}"] for r in rows],
    )  # fmt: skip
    summary = common.markdown_table(
        ["", "n"],
        [["measured: self-attention slower than the LSTM from", crossover or f"> {lengths[-1]}"],
         [f"by the formulas: attention's multiply-adds exceed the LSTM's from (n = 2d, d = {d})", formula_crossover]],
    )  # fmt: skip
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(lengths, [1e3 * r["attention_seconds"] for r in rows], "o-", label="self-attention (1 sequential op)")
    axis.plot(lengths, [1e3 * r["lstm_seconds"] for r in rows], "o-", label="LSTM (n sequential ops)")
    axis.axvline(formula_crossover, color="gray", ls=":", label=f"n = 2d = {formula_crossover} (equal MACs)")
    axis.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="forward ms (batch 1)",
             title=f"One layer, d = {d}, this CPU")  # fmt: skip
    axis.legend(fontsize=8)
    common.save(
        "sequential",
        {f"One layer, d = {d}, batch 1": table, "Crossover": summary},
        {"rows": rows, "measured_crossover": crossover, "formula_crossover": formula_crossover},
        figure,
        args.out,
    )


if __name__ == "__main__":
    main()
