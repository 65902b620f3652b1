"""Opt-in: faster decoding on CPU by computing large linear layers with oneDNN's packed weight layout.

Not part of the paper, and not used unless asked for:

    from hf_vanilla_transformer.cpu_decoding import pack_for_cpu_decoding
    pack_for_cpu_decoding(model)  # once, after loading; undo with unpack_cpu_decoding(model)

A decoding step multiplies few rows (batch x beams) by each weight matrix. For such products on CPU, oneDNN's
packed layout of W (the layout torch.compile's CPU backend uses) is faster than `nn.Linear`'s MKL call for large
matrices; `benchmarks/speed.py` measures generate() with and without it ("ours+packed"). The packing is a module
swap done once, outside the model's forward: each large `nn.Linear` of the decoder and the output projection
becomes a `PackedLinear` that holds the very same parameters (so ties, `state_dict`, `save_pretrained` and training
are unchanged) and keeps a packed copy of W, made on first use and remade whenever W changes in place. torch has no
public API for this layout: `torch.ops.mkldnn._reorder_linear_weight` and `_linear_pointwise` are the ops inductor
itself calls; where they are missing, `pack_for_cpu_decoding` changes nothing and says so.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN's packed products have a larger fixed cost per call than MKL's; below this size they are not faster.
MIN_ELEMENTS = 1 << 18


@functools.cache
def onednn_packed_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear ops (checked once by running them)."""
    try:
        weight, x = torch.ones(3, 2), torch.ones(1, 2)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return bool(torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), x @ weight.t()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class PackedLinear(nn.Linear):
    """`nn.Linear` that, for float32 inference on CPU (no_grad / inference_mode), multiplies by a packed copy of W.

    With gradients enabled, other dtypes or devices, and under torch.compile / torch.export it is `F.linear` with W
    itself. The packed copy is made on first use and remade when W changes through an in-place op (its version
    counter), a new parameter, or `.to()` / `.half()` / `.float()`. A write through `W.data` bypasses the version
    counter: after one, call `pack_for_cpu_decoding(model)` again, which drops every packed copy. The copies are not
    part of `state_dict`, pickling or `copy.deepcopy` (they are remade on first use)."""

    def _apply(self, fn, recurse: bool = True):
        self.__dict__.pop("_packed", None)  # dtype / device changes: pack the new weight on next use
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {k: v for k, v in super().__getstate__().items() if k != "_packed"}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            input.dtype != torch.float32
            or weight.dtype != torch.float32
            or input.device.type != "cpu"
            or weight.device.type != "cpu"
            or torch.is_grad_enabled()  # oneDNN's op has no backward: training and gradients take F.linear
            or torch.compiler.is_compiling()
        ):
            return F.linear(input, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(input, self._packed_weight(), self.bias, "none", [], "")

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        cached = self.__dict__.get("_packed")  # (key, packed): one attribute, replaced whole (thread-safe reads)
        if cached is None or cached[0] != key:
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None))
            self.__dict__["_packed"] = cached
        return cached[1]


def _swap(module: nn.Linear, cls: type[nn.Linear]) -> nn.Linear:
    """A module of class `cls` holding `module`'s own parameters (not copies)."""
    swapped = cls.__new__(cls)
    nn.Module.__init__(swapped)
    swapped.in_features, swapped.out_features = module.in_features, module.out_features
    swapped.weight, swapped.bias = module.weight, module.bias
    swapped.train(module.training)
    return swapped


def _replace(model: nn.Module, select, cls: type[nn.Linear]) -> list[str]:
    names = [name for name, module in model.named_modules() if select(name, module)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _swap(getattr(parent, child), cls))
    return names


def pack_for_cpu_decoding(model: nn.Module, min_elements: int = MIN_ELEMENTS) -> list[str]:
    """Swaps the decoder's and the output projection's `nn.Linear`s of at least `min_elements` weights (2^18 by
    default: smaller products are not faster packed) for `PackedLinear`s sharing their parameters. Returns the names
    of the swapped modules: empty for models whose matrices are all smaller, or where torch lacks oneDNN's packed
    ops. The packed copies cost one more copy of those weights in memory once used."""
    if not isinstance(min_elements, int) or isinstance(min_elements, bool) or min_elements < 0:
        raise ValueError(f"min_elements={min_elements!r} is invalid: expected an integer >= 0.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"pack_for_cpu_decoding expects a model (nn.Module), got {type(model).__name__}.")
    for module in model.modules():  # already packed: drop the copies, so that weights written via .data are used
        if isinstance(module, PackedLinear):
            module.__dict__.pop("_packed", None)
    if not onednn_packed_linear_available():
        import warnings

        warnings.warn("This torch build lacks oneDNN's packed linear ops; the model is left as it is.", stacklevel=2)
        return []

    def select(name: str, module: nn.Module) -> bool:
        in_decoder = ".decoder." in f".{name}" or name == "lm_head" or name.endswith(".lm_head")
        return type(module) is nn.Linear and in_decoder and module.weight.numel() >= min_elements

    return _replace(model, select, PackedLinear)


def quantize_for_cpu_decoding(model: nn.Module) -> nn.Module:
    """Opt-in, not exact: a copy of `model` whose `nn.Linear` layers compute in int8 on CPU, through torch's dynamic
    quantization (weights int8 per tensor, activations quantized at each call). Apply it to an unpacked model (a
    `PackedLinear` is not quantized). benchmarks/speed.py ("ours int8") and benchmarks/quantized.py (BLEU and chrF
    against fp32) measure it. torch marks its quantized tensors deprecated; that warning is silenced here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)  # a copy


def unpack_cpu_decoding(model: nn.Module) -> list[str]:
    """Undoes `pack_for_cpu_decoding`: every `PackedLinear` becomes an `nn.Linear` with the same parameters."""
    return _replace(model, lambda name, module: type(module) is PackedLinear, nn.Linear)


__all__ = [
    "MIN_ELEMENTS",
    "PackedLinear",
    "onednn_packed_linear_available",
    "pack_for_cpu_decoding",
    "quantize_for_cpu_decoding",
    "unpack_cpu_decoding",
]
