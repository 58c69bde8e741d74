"""The old/new output ensemble as a reference: its negative flips against A1, per ensemble weight.

    python benchmarks/ensemble_reference.py --update gemma
        → benchmarks/results/ensemble_reference.{json,md}

Per instance the ensemble's choice distribution is w·p_A1 + (1 − w)·p_A2, the mix the ``choice``
objective distils towards with ``--old-target ensemble`` (muscle/losses/choice.py; T = 1), and its
answer is that mix's argmax. It is not something `muscle` ships — it runs both stacks — but it says
whether a target a single student could learn exists: where even the ensemble cannot cut A2's flips
at A2's accuracy, no distillation towards it will. Every weight of the grid is reported, on the eval
split and on the update's train rows (what `muscle train` learns and validates on); nothing is
chosen here. A1's and A2's predictions come from the shared result cache (the gate's own engine),
so an update whose rows `compat_results.py` has run costs seconds.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from compat_results import Evaluator, ensure_adapters, ensure_bases, updates

from muscle import demo
from muscle.losses.choice import choice_log_probs
from pytest_modelcompat import atomic_write, discriminative_metrics

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)   # A1's share; 0: A2, 1: A1
OUT = Path(__file__).parent / "results" / "ensemble_reference"


def ensemble_rows(task, instances, old_preds, new_preds) -> list[dict]:
    """Per weight: the ensemble's accuracy and flips against A1 on ``instances``."""
    lengths = (torch.tensor([[float(max(len(c), 1)) for c in inst.choices] for inst in instances])
               if task.normalize else None)
    p_old, p_new = (choice_log_probs(torch.tensor([p.logliks for p in preds], dtype=torch.float64),
                                     lengths, 1.0).exp() for preds in (old_preds, new_preds))
    gold = [inst.gold for inst in instances]
    old_correct = [bool(p.correct) for p in old_preds]
    rows = []
    for w in WEIGHTS:
        pred = (w * p_old + (1 - w) * p_new).argmax(-1).tolist()
        m = discriminative_metrics(old_correct, [p == g for p, g in zip(pred, gold)],
                                   [p.pred for p in old_preds], pred)
        rows.append({"w": w, "acc": m["acc_new"], "nfr": m["nfr"], "pfr": m["pfr"],
                     "negative_flips": round(m["nfr"] * len(instances))})
    return rows


def split_rows(update: dict, evaluator: Evaluator, bases: tuple[Path, Path]) -> dict[str, dict]:
    """The ensemble grid on the eval split and, where the update has them, on its unseen train rows."""
    from muscle.objectives import teacher_predictions
    from pytest_modelcompat import load_instances, load_suite, resolve_task

    result = evaluator.result(update["a2"])
    splits = {"eval": {"n": len(result.instances),
                       "rows": ensemble_rows(evaluator.task, result.instances, result.old, result.new)}}
    if update.get("train_suite"):
        (task,) = [t for t in load_suite(update["train_suite"]()) if t.name == update["task"]]
        task = resolve_task(task)
        instances = load_instances(task, split="train", limit=None)
        options = {"device": "cpu", "dtype": "float32", "trust_remote_code": False, "allow_pickle": False}
        preds = [teacher_predictions(ref, task, instances, options=options, cache=evaluator.cache, batch_size=16,
                                     label=label)
                 for ref, label in (((update["a1"], bases[0]), "A1"), ((update["a2"], bases[1]), "A2"))]
        splits["train rows"] = {"n": len(instances), "rows": ensemble_rows(task, instances, *preds)}
    return splits


def render_markdown(results: dict) -> str:
    lines = ["# The old/new output ensemble as a reference (not a shipped model)", "",
             "Produced by `python benchmarks/ensemble_reference.py`. Per instance w·p_A1 + (1 − w)·p_A2 over the "
             "choices (T = 1), argmax; flips against A1. w = 0 is A2, w = 1 is A1. Every weight is shown; "
             "nothing is selected. *train rows*: the update's rows `muscle train` learns and validates on.", ""]
    for update, splits in results.items():
        for split, block in splits.items():
            a2 = block["rows"][0]
            lines += [f"## update `{update}` · {split} (n = {block['n']})", "",
                      "| w (A1's share) | acc | negative flips | NFR | × A2's NFR | PFR |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['w']:.1f} | {r['acc']:.3f} | {r['negative_flips']} | {r['nfr']:.3f} | "
                      f"{r['nfr'] / a2['nfr']:.2f} | {r['pfr']:.3f} |" for r in block["rows"]]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="append", choices=sorted(updates()), help="default: gemma")
    args = parser.parse_args(argv)
    os.environ.update(demo.demo_env())
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.update or ["gemma"]:
        update = updates()[name]
        bases = ensure_bases(update)
        ensure_adapters(update, bases)
        evaluator = Evaluator(update, bases, None)
        if evaluator.task.kind != "multiple_choice":
            raise SystemExit(f"{name}: the ensemble reference is for multiple-choice tasks")
        results[name] = split_rows(update, evaluator, bases)
    atomic_write(path, json.dumps(results, indent=1) + "\n")
    atomic_write(OUT.with_suffix(".md"), render_markdown(results))
    print(render_markdown(results))


if __name__ == "__main__":
    main()
