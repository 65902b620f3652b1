"""Experiment 6: Table 3 in miniature.

Table 3 varies one thing at a time around the base model on WMT14 EN-DE (100k steps, 8 P100s). Here each row is the
same change around the experiments' small base (d_model 64, d_ff 256, h 4, d_k 16, N 2, P_drop 0.1, eps_ls 0.1:
the paper's base at 1/8 of its widths and 1/3 of its depth) on the bundled corpus, at a fixed budget of `STEPS`
steps of ~1500 tokens. Dev perplexity (per BPE token, no label smoothing) and greedy BLEU sit beside the paper's
columns (per-wordpiece perplexity and BLEU on newstest2013). The base row is repeated with three seeds: differences
smaller than their spread are noise.

    python -m experiments.table3 [--tiny]
"""

from __future__ import annotations

import statistics

from experiments import common

STEPS = 400
# (row, the change at the small size, the paper's change, the paper's dev PPL and BLEU)
ROWS = [
    ("base", {}, "", 4.92, 25.8),
    ("A", {"h": 1}, "h 1, d_k 512", 5.29, 24.9),
    ("A", {"h": 16}, "h 16, d_k 32", 4.91, 25.8),
    ("B", {"d_k": 8}, "d_k 16", 5.16, 25.1),
    ("C", {"encoder_layers": 1, "decoder_layers": 1}, "N 2", 6.11, 23.7),
    ("C", {"encoder_layers": 4, "decoder_layers": 4}, "N 8", 4.88, 25.5),
    ("C", {"d_model": 32, "d_k": 8, "d_v": 8}, "d_model 256, d_k 32", 5.75, 24.5),
    ("C", {"d_model": 128, "d_k": 32, "d_v": 32}, "d_model 1024, d_k 128", 4.66, 26.0),
    ("C", {"d_ff": 128}, "d_ff 1024", 5.12, 25.4),
    ("C", {"d_ff": 1024}, "d_ff 4096", 4.75, 26.2),
    ("D", {"dropout": 0.0}, "P_drop 0.0", 5.77, 24.6),
    ("D", {"dropout": 0.2}, "P_drop 0.2", 4.95, 25.5),
    ("D", {"label_smoothing": 0.0}, "eps_ls 0.0", 4.67, 25.3),
    ("D", {"label_smoothing": 0.2}, "eps_ls 0.2", 5.47, 25.7),
    ("E", {"position_encoding": "learned"}, "learned positions", 4.92, 25.7),
]
SEEDS = (0, 1, 2)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    steps = 10 if args.tiny else STEPS
    rows = ROWS[:2] if args.tiny else ROWS
    base_runs = [common.train_run(f"base, seed {seed}", common.config(), steps, seed=seed)
                 for seed in (SEEDS[:1] if args.tiny else SEEDS)]  # fmt: skip
    base_ppl = [r.dev_perplexity for r in base_runs]
    base_bleu = [r.dev_bleu for r in base_runs]
    base_chrf = [r.dev_chrf for r in base_runs]
    table_rows, data = [], {"steps": steps, "base_seeds": [r.summary() for r in base_runs], "rows": []}
    for row, change, paper_change, paper_ppl, paper_bleu in rows:
        if not change:
            ppl, bleu, chrf = statistics.mean(base_ppl), statistics.mean(base_bleu), statistics.mean(base_chrf)
            described = f"mean of {len(base_runs)} seeds"
        else:
            run = common.train_run(f"{row} {change}", common.config(**change), steps)
            ppl, bleu, chrf = run.dev_perplexity, run.dev_bleu, run.dev_chrf
            described = ", ".join(f"{k} {v}" for k, v in change.items())
            data["rows"].append({"row": row, "change": change, **run.summary()})
        table_rows.append([row, paper_change or "-", paper_ppl, paper_bleu, described, ppl, bleu, chrf])
    spread = common.markdown_table(
        ["base, seeds " + ", ".join(map(str, SEEDS[: len(base_runs)])), "dev perplexity", "dev BLEU", "dev chrF"],
        [["values", ", ".join(f"{v:.2f}" for v in base_ppl), ", ".join(f"{v:.1f}" for v in base_bleu),
          ", ".join(f"{v:.1f}" for v in base_chrf)],
         ["max - min", max(base_ppl) - min(base_ppl), max(base_bleu) - min(base_bleu), max(base_chrf) - min(base_chrf)]],
    )  # fmt: skip
    table = common.markdown_table(
        ["row", "paper: change", "paper: PPL (dev)", "paper: BLEU (dev)", "here: change", "here: dev PPL",
         "here: dev BLEU", "here: dev chrF"], table_rows)  # fmt: skip
    plt = common.pyplot()
    figure, axis = plt.subplots(figsize=(8, 4))
    labels = [f"{r[0]}: {r[4]}" for r in table_rows]
    axis.barh(range(len(labels)), [r[7] for r in table_rows])
    low, high = min(base_chrf), max(base_chrf)
    axis.axvspan(low, high, color="gray", alpha=0.3, label="base, spread over seeds")
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="dev chrF (greedy)", title=f"Table 3 in miniature, {steps} steps")
    axis.legend(fontsize=8)
    data["table"] = table_rows
    common.save(
        "table3",
        {f"Rows A-E at the small size, {steps} steps each": table, "Noise across seeds": spread},
        data,
        figure,
        args.out,
    )


if __name__ == "__main__":
    main()
