"""`python -m experiments [--tiny]`: every experiment in turn (each also runs alone, `python -m experiments.NAME`),
with the wall time of each and of all."""

import sys
import time

from experiments import layer_norm, positions, residuals, scaling, sequential, table3

EXPERIMENTS = {"scaling": scaling, "positions": positions, "layer_norm": layer_norm, "residuals": residuals,
               "sequential": sequential, "table3": table3}  # fmt: skip


def main() -> None:
    started = time.perf_counter()
    walls = {}
    for name, module in EXPERIMENTS.items():
        print(f"\n=== experiment {name} ===", flush=True)
        start = time.perf_counter()
        module.main()
        walls[name] = time.perf_counter() - start
    for name, seconds in walls.items():
        print(f"[experiments] {name}: {seconds:.0f} s")
    print(f"[experiments] all: {time.perf_counter() - started:.0f} s wall on this machine ({' '.join(sys.argv[1:])})")


if __name__ == "__main__":
    main()
