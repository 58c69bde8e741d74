"""A/A noise on real weights: how far the *same* stack's decision margins move under arithmetic alone.

    python benchmarks/aa_noise.py [--limit 300] [--batch-size 16]

The shipped new stack (example_suite/artifacts/piqa_a2 on base v2) scores the first ``--limit``
PIQA validation instances, no result cache, three times:

- reference: float32, batch ``--batch-size``, file order;
- float32, batch 1, reversed order: what batch invariance promises (≤ 1e-5);
- bfloat16, batch ``--batch-size``: the noisiest arithmetic users commonly run.

Per run against the reference: the largest and the 99th-percentile change of the gold margin
g = s_gold − max_{k≠gold} s_k (a decision flips only if g changes sign), and the decisions that
changed. This is the measurement behind the default noise margin (docs/margins.md).
Writes benchmarks/results/aa_noise.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flip_anatomy import gold_indices, gold_margin, task_decision_values  # noqa: E402
from muscle import demo  # noqa: E402
from pytest_modelcompat import atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="first N PIQA validation instances")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.update(demo.demo_env())
    from pytest_modelcompat import load_instances, load_stack, load_suite, predict

    (task,) = [t for t in load_suite(demo.DEMO_SUITE) if t.name == demo.DEMO_TASK]
    instances = load_instances(task)[: args.limit]
    base = demo.base_v2_dir(demo.BASE_V2_DELTA)
    runs = {"float32, batch 1, reversed": ("float32", 1, True), "bfloat16": ("bfloat16", args.batch_size, False)}

    def score(dtype: str, batch_size: int, reverse: bool) -> np.ndarray:
        stack = load_stack(demo.ADAPTER_V2, base, device="cpu", dtype=dtype)
        order = instances[::-1] if reverse else instances
        predictions = predict(stack, task, order, batch_size=batch_size)
        margins = gold_margin(task_decision_values(task, order, predictions), gold_indices(order))
        return margins[::-1] if reverse else margins

    reference = score("float32", args.batch_size, False)
    rows = {}
    for name, (dtype, batch_size, reverse) in runs.items():
        margins = score(dtype, batch_size, reverse)
        delta = np.abs(margins - reference)
        rows[name] = {"dtype": dtype, "batch_size": batch_size, "reversed_order": reverse,
                      "max_abs_margin_change": float(delta.max()),
                      "p99_abs_margin_change": float(np.quantile(delta, 0.99)),
                      "median_abs_margin_change": float(np.median(delta)),
                      "decisions_changed": int(((margins > 0) != (reference > 0)).sum())}
    results = {"stack": "example_suite/artifacts/piqa_a2 on base v2 (shipped update)", "task": "piqa",
               "n": len(instances), "reference": f"float32, batch {args.batch_size}, file order",
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU", "runs": rows}
    lines = ["# A/A noise: the same stack scored under different arithmetic (real SmolLM2-135M-Instruct)", "",
             f"Produced by `python benchmarks/aa_noise.py`. Stack: {results['stack']}; task: PIQA, first "
             f"{results['n']} validation instances; reference: {results['reference']}; {results['machine']}. "
             "g = gold margin (nats); a decision changes only where g changes sign.", "",
             "| run | max abs Δg | p99 abs Δg | median abs Δg | decisions changed |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['max_abs_margin_change']:.2e} | {r['p99_abs_margin_change']:.2e} | "
              f"{r['median_abs_margin_change']:.2e} | {r['decisions_changed']} |" for name, r in rows.items()]
    atomic_write(RESULTS / "aa_noise.json", json.dumps(results, indent=1) + "\n")
    atomic_write(RESULTS / "aa_noise.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
