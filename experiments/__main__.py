"""`python -m experiments [NAME ...] [--tiny]`: every experiment in turn, or the NAMEs given (each also runs alone,
`python -m experiments.NAME`), with the wall time of each and of all."""

import sys
import time

from experiments import layer_norm, positions, questions, residuals, scaling, sequential, table3

EXPERIMENTS = {"scaling": scaling, "positions": positions, "layer_norm": layer_norm, "residuals": residuals,
               "sequential": sequential, "table3": table3, "questions": questions}  # fmt: skip


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(EXPERIMENTS)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long version that checks the code (CI)")
    parser.add_argument("--out", help="where the tables and figures go (default: experiments/results)")
    args = parser.parse_args()
    options = ["--tiny"] * args.tiny + (["--out", args.out] if args.out else [])
    unknown = [name for name in args.names if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}: expected some of {', '.join(EXPERIMENTS)}")
    names = args.names
    sys.argv = [sys.argv[0], *options]  # --tiny, --out DIR: read by each experiment
    started = time.perf_counter()
    walls = {}
    for name, module in EXPERIMENTS.items():
        if names and name not in names:
            continue
        print(f"\n=== experiment {name} ===", flush=True)
        start = time.perf_counter()
        module.main()
        walls[name] = time.perf_counter() - start
    for name, seconds in walls.items():
        print(f"[experiments] {name}: {seconds:.0f} s")
    print(f"[experiments] all: {time.perf_counter() - started:.0f} s wall on this machine ({' '.join(sys.argv[1:])})")


if __name__ == "__main__":
    main()
