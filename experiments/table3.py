"""Experiment 6: Table 3 in miniature.

Table 3 varies one thing at a time around the base model on WMT14 EN-DE (100k steps, 8 P100s) and reports dev
perplexity and BLEU at convergence. Here each row is the same change around the experiments' small base (d_model
64, d_ff 256, h 4, d_k 16, N 2, P_drop 0.1, eps_ls 0.1: the paper's base at 1/8 of its widths and 1/3 of its depth)
on the bundled corpus, in two regimes:
- rows A, B, C, E (capacity and attention): the shared protocol, CAPACITY_STEPS steps (9x the warm-up), dev NLL
  every 100 steps; the base with 3 seeds, each row with 1 seed and a second one where the row falls outside the
  base's seed range;
- rows D (regularisation), where overfitting can exist: REGULARISATION_PAIRS training pairs for
  REGULARISATION_STEPS steps (~25 epochs), P_drop 0 / 0.1 / 0.3 and eps_ls 0 / 0.1 / 0.2, 2 paired seeds each.
Dev perplexity here is per BPE token of this corpus, not comparable with the paper's per-wordpiece newstest2013
figure: compare the direction of each row's change, not the values.

    python -m experiments.table3 [--tiny]
"""

from __future__ import annotations

from experiments import common

CAPACITY_STEPS = 900
REGULARISATION_PAIRS = 3_000
REGULARISATION_STEPS = 1_200
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
    ("E", {"position_encoding": "learned"}, "learned positions", 4.92, 25.7),
]
REGULARISATION_ROWS = [
    ("base", {}, "", 4.92, 25.8),
    ("D", {"dropout": 0.0}, "P_drop 0.0", 5.77, 24.6),
    ("D", {"dropout": 0.3}, "P_drop 0.2", 4.95, 25.5),
    ("D", {"label_smoothing": 0.0}, "eps_ls 0.0", 4.67, 25.3),
    ("D", {"label_smoothing": 0.2}, "eps_ls 0.2", 5.47, 25.7),
]


def small_corpus(is_tiny: bool) -> common.Corpus:
    """The first REGULARISATION_PAIRS training pairs of the shared corpus, its dev split."""
    data = common.corpus(common.VOCAB_SIZE, is_tiny)
    return common.Corpus(data.tokenizer, data.train[:REGULARISATION_PAIRS], data.dev_sources, data.dev_targets,
                         data.dev, data.dev_categories)  # fmt: skip


def describe(change: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in change.items()) or "base"


def direction(paper_ppl: float, base_ppl: float) -> str:
    return "-" if paper_ppl == base_ppl else ("worse" if paper_ppl > base_ppl else "better")


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    rows = ROWS[:2] if args.tiny else ROWS
    specs = [common.Spec(describe(change), change, steps=CAPACITY_STEPS, seed=seed)
             for _, change, *_ in rows for seed in (common.seeds(3) if not change else (0,))]  # fmt: skip
    first = common.arms(common.run_all(specs))
    base = [r.dev_nll for r in first["base"]]
    outside = [common.Spec(describe(change), change, steps=CAPACITY_STEPS, seed=1) for _, change, *_ in rows[1:]
               if not min(base) <= first[describe(change)][0].dev_nll <= max(base)]  # fmt: skip
    for run in common.run_all(outside) if outside else []:
        first[run.name].append(run)

    regularisation = REGULARISATION_ROWS[:2] if args.tiny else REGULARISATION_ROWS
    d_specs = [common.Spec(describe(change), change, steps=REGULARISATION_STEPS, seed=seed, data=small_corpus)
               for _, change, *_ in regularisation for seed in common.seeds(2)]  # fmt: skip
    second = common.arms(common.run_all(d_specs))

    def table(groups, row_list, base_runs):
        lines, answers = [], []
        base_nll = [r.dev_nll for r in base_runs]
        for row, change, paper_change, paper_ppl, paper_bleu in row_list:
            runs = groups[describe(change)]
            nlls = [r.dev_nll for r in runs]
            ours = "-" if not change else ("worse" if sum(nlls) / len(nlls) > sum(base_nll) / len(base_nll)
                                           else "better")  # fmt: skip
            result = common.compare(base_nll, nlls) if change else {"finding": False}
            lines.append([row, paper_change or "-", paper_ppl, paper_bleu, direction(paper_ppl, 4.92),
                          describe(change), common.spread(nlls), common.spread([r.exact for r in runs]), ours,
                          ("finding" if result["finding"] else "within noise") if change else "-"])  # fmt: skip
            if change:
                answers.append(f"{row} {describe(change)}: " + common.verdict("base", base_nll, describe(change), nlls))
        return lines, answers

    capacity_rows, capacity_answers = table(first, rows, first["base"])
    d_rows, d_answers = table(second, regularisation, second["base"])
    header = ["row", "paper: change", "paper: dev PPL", "paper: BLEU", "paper: PPL vs base", "here: change",
              "here: dev NLL", "here: dev exact %", "here: NLL vs base", "here: verdict"]  # fmt: skip
    overfit = {describe(c): [r.dev_nlls for r in second[describe(c)]] for _, c, *_ in regularisation}

    plt = common.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for name in ("encoder_layers 1, decoder_layers 1", "base", "encoder_layers 4, decoder_layers 4"):
        if name in first:
            common.band(axes[0], first[name], name.replace("encoder_layers", "N").split(",")[0] if name != "base"
                        else "base (N 2)")  # fmt: skip
    axes[0].set(xlabel="step", ylabel="dev NLL per token", yscale="log", title="Depth: dev NLL over the budget")
    axes[0].legend(fontsize=8)
    labels = [f"{r[0]}: {r[5]}" for r in capacity_rows]
    means = [sum(r.dev_nll for r in first[describe(c)]) / len(first[describe(c)]) for _, c, *_ in rows]
    axes[1].barh(range(len(labels)), means)
    axes[1].axvspan(min(base), max(base), color="gray", alpha=0.3, label="base, range over 3 seeds")
    axes[1].set_yticks(range(len(labels)), labels, fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set(xlabel="final dev NLL per token", title=f"Rows A, B, C, E at {CAPACITY_STEPS} steps")
    axes[1].legend(fontsize=8)
    for _, change, *_ in regularisation:
        common.band(axes[2], second[describe(change)], describe(change))
    axes[2].set(xlabel="step", ylabel="dev NLL per token", yscale="log",
                title=f"Rows D on {REGULARISATION_PAIRS} pairs ({REGULARISATION_STEPS} steps)")  # fmt: skip
    axes[2].legend(fontsize=8)
    best_step = {name: [r.eval_steps[min(range(len(r.dev_nlls)), key=r.dev_nlls.__getitem__)] for r in second[name]]
                 for name in overfit}  # fmt: skip
    d_answers += [f"{name}: dev NLL lowest at step {', '.join(map(str, steps))} (final {REGULARISATION_STEPS})"
                  for name, steps in best_step.items()]  # fmt: skip
    common.save(
        "table3",
        {f"Rows A, B, C, E: {CAPACITY_STEPS} steps, shared protocol (mean (min-max) over seeds)":
             common.markdown_table(header, capacity_rows),
         f"Rows D: {REGULARISATION_PAIRS} training pairs, {REGULARISATION_STEPS} steps, 2 paired seeds":
             common.markdown_table(header, d_rows)},
        {"capacity": {n: [r.summary() for r in runs] for n, runs in first.items()},
         "regularisation": {n: [r.summary() for r in runs] for n, runs in second.items()}},
        figure, args.out, capacity_answers + d_answers)  # fmt: skip


if __name__ == "__main__":
    main()
