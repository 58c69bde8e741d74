"""Why compatibility training removes few negative flips here: the anatomy of an update's flips.

    python benchmarks/flip_anatomy.py [--update piqa-text shipped ...] [--alphas 0.5,1.0]

Reads the gate's own predictions on a multiple-choice eval split (from the result cache that
benchmarks/compat_results.py fills; whatever is missing is scored) for A1 (M1), A2 (M2) and every
compatibility adapter compat_results trained for the update. Per instance the *gold margin*
g = s_gold − max_{k≠gold} s_k (s: the values the gate takes the argmax of) is > 0 iff the stack is
right. Reported per update:

- how alike the two stacks are: corr(g_1, g_2), and the median |g_2| over all instances and over
  the negative flips (the flips sit at the decision boundary);
- the old/new ensemble w·p_1 + (1 − w)·p_2 (p = softmax(s), temperature 1): its NFR against M1. It is what
  distilling the ensemble reaches if the student matches it on unseen instances;
- per compatibility adapter S: its shift t = g_S − g_2 against the gap to M1, d = g_1 − g_2:
  corr(t, d), the slope β = ⟨t, d⟩ / ⟨d, d⟩ (1: S moved all the way to M1 on average, 0: its moves
  are unrelated to M1) and the std of t − β·d (moves unrelated to M1; they make flips of their own);
- weight interpolation (BCWI, arXiv 2301.10546), a training-free candidate: v2 + α·ΔW_A1 +
  (1 − α)·ΔW_A2, the two LoRA deltas combined exactly (rank r1 + r2) by PEFT's
  ``add_weighted_adapter(combination_type="cat")``, for each α in ``--alphas``;
- the whole stacks interpolated, base included (`muscle train`'s start, muscle/interpolation.py),
  for each α in ``--stack-alphas``.

Writes benchmarks/results/flip_anatomy.{json,md} (sections merged by update).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compat_results import MC_KEYS, RESULTS, WORK, Evaluator, ensure_bases, updates  # noqa: E402
from muscle import demo  # noqa: E402
from pytest_modelcompat import atomic_directory, atomic_write  # noqa: E402

ENSEMBLE_WEIGHTS = (0.3, 0.5, 0.7)


def task_decision_values(task, instances, predictions) -> np.ndarray:
    """[n, C]: per instance, the values the gate takes the argmax of."""
    from pytest_modelcompat import decision_values

    return np.array([decision_values(p.logliks, i.choices, task.normalize)
                     for p, i in zip(predictions, instances, strict=True)])


def gold_indices(instances) -> np.ndarray:
    return np.array([int(i.gold) for i in instances])


def choice_values(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(old values [n, C], new values [n, C], gold [n]) of a TaskResult."""
    return (task_decision_values(result.task, result.instances, result.old),
            task_decision_values(result.task, result.instances, result.new), gold_indices(result.instances))


def gold_margin(values: np.ndarray, gold: np.ndarray) -> np.ndarray:
    rows = np.arange(len(gold))
    others = values.copy()
    others[rows, gold] = -np.inf
    return values[rows, gold] - others.max(1)


def softmax(values: np.ndarray) -> np.ndarray:
    z = np.exp(values - values.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def interpolated_adapter(update: dict, v2: Path, alpha: float, out: Path) -> Path:
    """v2 + α·ΔW_A1 + (1 − α)·ΔW_A2 as one LoRA adapter dir (built once)."""
    if (out / "adapter_config.json").is_file():
        return out
    from pytest_modelcompat import attach_adapter, load_base

    model = attach_adapter(load_base(v2, device="cpu")[0], update["a2"], name="new")
    model = attach_adapter(model, update["a1"], name="old")
    model.add_weighted_adapter(["old", "new"], [alpha, 1 - alpha], "interpolated", combination_type="cat")
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, selected_adapters=["interpolated"])
        for name in os.listdir(tmp / "interpolated"):   # PEFT nests a non-default adapter's files
            (tmp / "interpolated" / name).rename(tmp / name)
        (tmp / "interpolated").rmdir()
    return out


def interpolated_start(update: dict, bases: tuple[Path, Path], alpha: float, out: Path) -> Path:
    """`muscle train`'s start θ_α for the update (both stacks interpolated, as a LoRA on v2), saved once."""
    if (out / "adapter_config.json").is_file():
        return out
    from muscle.interpolation import load_interpolated_starts
    from pytest_modelcompat import load_base

    starts = load_interpolated_starts(load_base(bases[1], device="cpu")[0], (update["a1"], bases[0]),
                                      (update["a2"], bases[1]), (alpha,), "default", device="cpu")
    starts.use(alpha)
    with atomic_directory(out) as tmp:
        starts.model.save_pretrained(tmp)
    return out


def anatomy(name: str, update: dict, alphas: list[float], stack_alphas: list[float]) -> dict:
    bases = ensure_bases(update)
    evaluator = Evaluator(update, bases, None)
    plain = evaluator.result(update["a2"])
    old, new, gold = choice_values(plain)
    g1, g2 = gold_margin(old, gold), gold_margin(new, gold)
    negative = (g1 > 0) & (g2 <= 0)
    record = {"task": plain.task.name, "n": len(gold), "a2_negative_flips": int(negative.sum()),
              "a2_nfr": plain.metrics["nfr"], "margin_corr": float(np.corrcoef(g1, g2)[0, 1]),
              "median_abs_margin": float(np.median(np.abs(g2))),
              "median_abs_margin_on_negative_flips": float(np.median(np.abs(g2[negative]))),
              "ensemble": [], "students": [], "interpolation": [], "stack_interpolation": []}
    for w in ENSEMBLE_WEIGHTS:
        right = (w * softmax(old) + (1 - w) * softmax(new)).argmax(1) == gold
        record["ensemble"].append({"weight_m1": w, "negative_flips": int(((g1 > 0) & ~right).sum()),
                                   "acc": float(right.mean())})
    d = g1 - g2
    student_dirs = sorted(p.parent for p in (WORK / name / plain.task.name).glob("*/adapter_config.json"))
    for adapter in student_dirs:
        result = evaluator.result(adapter)
        shift = gold_margin(choice_values(result)[1], gold) - g2
        beta = float(shift @ d / (d @ d))
        record["students"].append({
            "adapter": adapter.name, "nfr": result.metrics["nfr"], "acc_new": result.metrics["acc_new"],
            "shift_corr_with_gap": float(np.corrcoef(shift, d)[0, 1]), "beta": beta,
            "shift_std": float(shift.std()), "unrelated_shift_std": float((shift - beta * d).std())})
    for alpha in alphas:
        adapter = interpolated_adapter(update, bases[1], alpha, WORK / name / "interpolated" / f"alpha-{alpha}")
        metrics = evaluator.result(adapter).metrics
        record["interpolation"].append({"alpha": alpha, **{k: metrics[k] for k in MC_KEYS}})
    for alpha in stack_alphas:
        adapter = interpolated_start(update, bases, alpha, WORK / name / "interpolated" / f"stacks-alpha-{alpha}")
        metrics = evaluator.result(adapter).metrics
        record["stack_interpolation"].append({"alpha": alpha, **{k: metrics[k] for k in MC_KEYS}})
    return record


def render_markdown(results: dict) -> str:
    lines = ["# Anatomy of the negative flips (real SmolLM2-135M-Instruct weights)", "",
             "Produced by `python benchmarks/flip_anatomy.py` from the gate's predictions on the eval split "
             "(see its docstring for the definitions). g: gold margin, d = g_M1 − g_M2, t = g_S − g_M2.", ""]
    for name, r in results.items():
        lines += [f"## update `{name}` · {r['task']} (n = {r['n']})", "",
                  f"- A2: {r['a2_negative_flips']} negative flips (NFR {r['a2_nfr']:.3f}); corr(g_M1, g_M2) = "
                  f"{r['margin_corr']:.3f}; median |g_M2| {r['median_abs_margin']:.2f} over all instances, "
                  f"{r['median_abs_margin_on_negative_flips']:.2f} over the negative flips.",
                  "- Old/new ensemble: " + "; ".join(
                      f"w = {e['weight_m1']}: {e['negative_flips']} flips, acc {e['acc']:.3f}" for e in r["ensemble"]),
                  "", "| compatibility adapter | acc new | NFR | corr(t, d) | β | std t | std (t − β·d) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['adapter']} | {s['acc_new']:.3f} | {s['nfr']:.3f} | {s['shift_corr_with_gap']:.3f} | "
                  f"{s['beta']:.3f} | {s['shift_std']:.2f} | {s['unrelated_shift_std']:.2f} |" for s in r["students"]]
        for key, what in (("interpolation", "the two adapters on v2"), ("stack_interpolation", "the whole stacks")):
            if r.get(key):
                lines += ["", f"| weight interpolation of {what}, α | acc new | NFR [95 % CI] | PFR | McNemar p |",
                          "|---|---|---|---|---|"]
                lines += [f"| {i['alpha']} | {i['acc_new']:.3f} | {i['nfr']:.3f} [{i['nfr_ci'][0]:.3f}, "
                          f"{i['nfr_ci'][1]:.3f}] | {i['pfr']:.3f} | {i['mcnemar_p']:.3f} |" for i in r[key]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", nargs="+", default=["piqa-text", "shipped"], choices=sorted(updates()))
    parser.add_argument("--alphas", default="0.5,1.0", help="comma-separated weights of A1 in the adapters' interpolation")
    parser.add_argument("--stack-alphas", default="0.5", help="comma-separated weights of M1 in the stacks' interpolation")
    args = parser.parse_args(argv)
    os.environ.update(demo.demo_env())
    alphas = [float(a) for a in args.alphas.split(",") if a]
    stack_alphas = [float(a) for a in args.stack_alphas.split(",") if a]
    # merged by update: re-running one update replaces only its section
    existing = RESULTS / "flip_anatomy.json"
    results = json.loads(existing.read_text()) if existing.is_file() else {}
    results.update({name: anatomy(name, updates()[name], alphas, stack_alphas) for name in args.update})
    atomic_write(RESULTS / "flip_anatomy.json", json.dumps(results, indent=1) + "\n")
    atomic_write(RESULTS / "flip_anatomy.md", render_markdown(results))
    print(render_markdown(results))


if __name__ == "__main__":
    main()
