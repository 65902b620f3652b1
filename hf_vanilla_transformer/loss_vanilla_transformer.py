"""The training loss of §5.4: token-level cross-entropy with label smoothing eps_ls.

`label_smoothed_cross_entropy` has the signature of transformers' loss functions (`loss_function(logits, labels,
vocab_size, num_items_in_batch=None, ignore_index=-100, **kwargs)`); the model uses it through the library's
`loss_function` hook, so assigning another function to `model.loss_function` replaces it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import is_torchdynamo_compiling

# float32 temporaries of 16 MiB per block. (A module constant: torch.compile cannot read a class attribute of an
# autograd.Function inside its forward and would break the graph there.)
BLOCK_ELEMENTS = 1 << 22


class LabelSmoothedCrossEntropy(torch.autograd.Function):
    """The summed label-smoothed cross-entropy of §5.4 over the rows of `logits` (N, V) whose label is not -100: for
    each, logsumexp(x) - (1 - eps) * x[label] - eps * mean(x), which equals
    `F.cross_entropy(logits.float(), labels, label_smoothing=eps, reduction="sum")`.

    Written here because torch's cross-entropy keeps a float32 (N, V) tensor of log-probabilities for the backward
    pass (plus a float32 copy of bf16 logits), and its backward makes several more (N, V) tensors; with the paper's
    37000-token vocabulary these are the largest tensors of a training step. This version keeps nothing but the
    logits, works through the rows in blocks whose float32 temporaries stay small, and writes the gradient,
    softmax(x) - (1 - eps) * onehot(label) - eps / V, straight into one tensor of the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
        rows, vocab = logits.shape
        block = max(1, BLOCK_ELEMENTS // vocab)
        keep = labels != -100
        targets = labels.clamp(min=0)[:, None]  # (N, 1); ignored rows are zeroed below
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, block):
            x = logits[start : start + block].float()  # (n, V)
            lse = torch.logsumexp(x, dim=-1)
            per_row = lse - (1.0 - epsilon) * x.gather(1, targets[start : start + block]).squeeze(1)
            if epsilon:
                per_row = per_row - epsilon * x.mean(dim=-1)
            total += torch.where(keep[start : start + block], per_row, 0.0).sum()
        ctx.save_for_backward(logits, targets, keep)
        ctx.epsilon = epsilon
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, keep = ctx.saved_tensors
        rows, vocab = logits.shape
        block = max(1, BLOCK_ELEMENTS // vocab)
        grad_logits = torch.empty_like(logits)
        scale = torch.where(keep, grad_total.float(), 0.0)[:, None]  # (N, 1): ignored rows get no gradient
        on_target = torch.full((1, 1), -(1.0 - ctx.epsilon), dtype=torch.float32, device=logits.device)
        for start in range(0, rows, block):
            end = start + block
            grad = torch.softmax(logits[start:end], dim=-1, dtype=torch.float32)  # (n, V)
            if ctx.epsilon:
                grad -= ctx.epsilon / vocab
            grad.scatter_add_(1, targets[start:end], on_target.expand(grad.shape[0], 1))
            torch.mul(grad, scale[start:end], out=grad_logits[start:end])
        return grad_logits, None, None


def check_label_values(labels: torch.Tensor, vocab_size: int, ignore_index: int = -100) -> None:
    """Labels (ignored positions already -100) must be token ids or -100; anything else is named. It reads the labels,
    so it runs in eager mode only."""
    if is_torchdynamo_compiling():
        return
    low, high = torch.aminmax(labels)
    if (low < 0 and bool((labels[labels < 0] != -100).any())) or high >= vocab_size:
        bad = int(high) if high >= vocab_size else int(labels[(labels < 0) & (labels != -100)][0])
        raise ValueError(
            f"labels contain {bad}, which is neither a token id in [0, vocab_size={vocab_size}) nor {ignore_index} "
            "(the ignored position)."
        )


@torch.compiler.disable
def _summed_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The loss runs eagerly under torch.compile (a graph break between the model and its loss): compiled, inductor's
    code for the blocked loop over the vocabulary made the base model's fp32 training step slower than the eager one
    on CPU (an A/B while writing this; benchmarks/speed.py's "ours+compiled" measures the result)."""
    return LabelSmoothedCrossEntropy.apply(logits, labels, epsilon)


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    **kwargs: Any,
) -> torch.Tensor:
    """Label-smoothed cross-entropy (§5.4) per target token: summed, then divided by the number of labelled tokens
    (or by `num_items_in_batch`, which the Trainer passes so that gradient accumulation is exact).

    `logits` (B, T, V) and `labels` (B, T) are aligned: the labels are not shifted (the decoder's input is the
    shifted copy). Labels are token ids or `ignore_index`; anything else raises a ValueError naming it.
    """
    vocab = logits.shape[-1] if vocab_size is None else vocab_size
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}.")
    labels = labels.to(logits.device)
    if ignore_index != -100:
        labels = labels.masked_fill(labels == ignore_index, -100)
    check_label_values(labels, vocab, ignore_index)
    total = _summed_loss(logits.flatten(0, 1), labels.flatten(), float(label_smoothing))
    if num_items_in_batch is None:
        num_items_in_batch = (labels != -100).sum()
    if not is_torchdynamo_compiling() and num_items_in_batch == 0:
        # The mean over no tokens is 0 / 0: a NaN loss would poison the optimiser's moments silently.
        raise ValueError(
            f"labels hold no token to predict (all {labels.numel()} are {ignore_index}, or num_items_in_batch is 0); "
            "the loss over no tokens is undefined."
        )
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


__all__ = ["LabelSmoothedCrossEntropy", "check_label_values", "label_smoothed_cross_entropy"]
