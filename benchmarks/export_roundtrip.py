"""Export round trips against the eager model, at lengths the graph was not traced with.

    python benchmarks/export_roundtrip.py                 # the paper's base model (random weights, V = 37000)
    python benchmarks/export_roundtrip.py --preset tiny   # seconds

Prints, for torch.export.export (dynamic batch, source and target lengths), torch.onnx.export(dynamo=True) run in
ONNX Runtime, and torch.compile(fullgraph=True, dynamic=True): the largest absolute logit difference from eager
at the traced shape and at a new one, and whether the greedy next tokens agree. tests/test_export.py asserts the
same on the tiny model.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.export import Dim

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, any_config  # noqa: E402


class LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits


def batch(vocab: int, size: int, source: int, target: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (size, source), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, source // 2 :] = 0  # one padded sentence
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, torch.randint(4, vocab, (size, target), generator=generator)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--vocab_size", type=int, default=37000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = any_config(args.preset, vocab_size=args.vocab_size)
    model = LogitsOnly(VanillaTransformerForConditionalGeneration(config).eval()).eval()
    traced, new = batch(config.vocab_size, 2, 7, 5, 0), batch(config.vocab_size, 3, 19, 11, 1)
    dynamic = {
        "input_ids": {0: Dim("batch", max=256), 1: Dim("source", min=2, max=1024)},
        "attention_mask": {0: Dim("batch", max=256), 1: Dim("source", min=2, max=1024)},
        "decoder_input_ids": {0: Dim("batch", max=256), 1: Dim("target", min=2, max=1024)},
    }
    with torch.no_grad():
        eager = {name: model(*inputs) for name, inputs in (("traced", traced), ("new", new))}

    def report(route: str, seconds: float, run) -> None:
        for name, inputs in (("traced", traced), ("new", new)):
            out = torch.as_tensor(run(inputs))
            diff = (out - eager[name]).abs().max().item()
            same = torch.equal(out.argmax(-1), eager[name].argmax(-1))
            shape = "x".join(map(str, inputs[0].shape)) + "/" + str(inputs[2].shape[1])
            print(f"{route:28s} {name:6s} B x S / T = {shape:9s} max |diff| {diff:.2e}  argmax equal {same}")
        print(f"{route:28s} build {seconds:.1f} s", flush=True)

    start = time.perf_counter()
    exported = torch.export.export(model, traced, dynamic_shapes=dynamic)
    with torch.no_grad():
        report("torch.export", time.perf_counter() - start, lambda inputs: exported.module()(*inputs))

    try:
        import onnxruntime
    except ImportError as error:
        print(f"ONNX Runtime skipped: {error}")
    else:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            start = time.perf_counter()
            torch.onnx.export(model, traced, path, dynamo=True, dynamic_shapes=dynamic)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            report(
                "onnx (dynamo) + onnxruntime",
                time.perf_counter() - start,
                lambda inputs: torch.from_numpy(
                    session.run(None, dict(zip(names, (t.numpy() for t in inputs), strict=True)))[0]
                ),
            )

    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(*traced)
        report("torch.compile fullgraph", time.perf_counter() - start, lambda inputs: compiled(*inputs))


if __name__ == "__main__":
    main()
