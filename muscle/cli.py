"""`muscle`: train compatibility adapters (train), task adapters (finetune), and run the gate (eval).

Exit codes: 0 ok, 1 gate failed, 2 usage or input error (one line on stderr, no traceback).
Runs as is on one device, or under ``accelerate launch`` for several processes / GPUs / nodes.
"""

from __future__ import annotations

import argparse
import sys

from pytest_modelcompat import CompatInputError

EPILOG = """examples:
  muscle finetune --suite modelcompat.yaml --task piqa --base v1/ --output a1/
  muscle finetune --suite modelcompat.yaml --task piqa --base v2/ --output a2/
  muscle eval --suite modelcompat.yaml --old-adapter a1/ --new-adapter a2/ --report report/
  muscle train --suite modelcompat.yaml --task piqa --old-adapter a1/ --new-adapter a2/ --output a2c/
  accelerate launch --num_processes 2 -m muscle.cli train ...      (multi-process / multi-GPU)
  accelerate launch --num_processes 2 -m muscle.cli eval ...       (instances split between processes)
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default, except where there is none to show (unset, off) or the help
    text already says what it is."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line (not argparse's usage block), exit 2 like every input error
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickle (.bin/.pt) weights; they can run code, so only from sources you trust")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a base model's own Python code (transformers trust_remote_code)")


def _training_options(p: argparse.ArgumentParser, *, mode: str) -> None:
    from muscle.trainer import DEFAULT_EPOCHS, DEFAULT_LR, NEW_BEATS_OLD_DEFAULTS
    from pytest_modelcompat import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICES, DTYPES

    p.add_argument("--suite", required=True, help="suite YAML (modelcompat.yaml / compat_*.yaml)")
    p.add_argument("--task", required=True, help="task name in the suite; trains on its `train:` file")
    p.add_argument("--output", required=True, help="output adapter dir (written atomically at the end)")
    p.add_argument("--epochs", type=int, default=None if mode == "train" else DEFAULT_EPOCHS[mode],
                   help="passes over the train split" + (" (default 0: the interpolated start or A2, whichever "
                                                         f"validation prefers, untrained; {DEFAULT_EPOCHS['finetune']} "
                                                         "from A2 with --interpolate 0, --add-modules or across base "
                                                         f"families; {NEW_BEATS_OLD_DEFAULTS['epochs']} from A2, choice objective, "
                                                         "where A2 beats A1 on validation)"
                                                         if mode == "train" else ""))
    p.add_argument("--lr", type=float, default=DEFAULT_LR[mode], help="AdamW learning rate (linear decay to 0)")
    p.add_argument("--batch-size", type=int, default=8, help="training examples per optimizer step")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (prompt cut from the left)")
    p.add_argument("--seed", type=int, default=0, help="seeds the 80/20 split, shuffling and init")
    p.add_argument("--limit", type=int, help="use only the first N rows of the train file")
    p.add_argument("--val-rows", type=int,
                   help="validation rows drawn (seeded) from those, the rest trains (default: 20%%); "
                        "validation only scores, so a larger one makes epoch selection less noisy")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in .OUT.work/")
    p.add_argument("--select", choices=("nfr", "loss"),
                   help="epoch selection on the validation split (train: nfr vs M1, finetune: loss)")
    p.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE,
                   help="auto: CUDA when available")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE, help="weights and compute dtype")
    _trust_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="muscle", description=__doc__.splitlines()[0], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a MUSCLE compatibility adapter (student init from A2)",
                           formatter_class=_HelpFormatter)
    _training_options(train, mode="train")
    train.add_argument("--old-adapter", required=True, help="A1: the old stack's adapter dir")
    train.add_argument("--new-adapter", required=True, help="A2: the new stack's adapter dir (student init)")
    train.add_argument("--old-base", help="B1 (default: A1's base_model_name_or_path)")
    train.add_argument("--new-base", help="B2 (default: A2's base_model_name_or_path)")
    train.add_argument("--objective", choices=("token", "choice", "sequence"),
                       help="what the student learns from: token = the paper's per-token KL (shared vocabulary); "
                            "choice = multiple-choice distributions; sequence = the better teacher's output "
                            "(default: choice for multiple choice, sequence for generation)")
    train.add_argument("--mask", choices=("paper", "ll-token", "ll-seq", "old-correct", "none"),
                       help="which tokens (token) or instances (choice, sequence) take the old side's target, "
                            "the rest the new side's (default: paper for token and sequence, old-correct for choice)")
    train.add_argument("--temperature", type=float, default=2.0, help="softening of token/choice distributions")
    train.add_argument("--ce-weight", type=float, default=None,
                       help="weight of the auxiliary cross-entropy on the gold answer: L = (1-w) L_comp + w CE "
                            "(default 0; choice, where A2 beats A1 on validation: 1)")
    train.add_argument("--old-target", choices=("m1", "ensemble"),
                       help="choice: where the mask says 'old', imitate M1 or the M1/M2 ensemble "
                            "(default: m1)")
    train.add_argument("--new-target", choices=("m2", "ensemble"), default="m2",
                       help="choice: where the mask says 'new', imitate M2 or the M1/M2 ensemble")
    train.add_argument("--ensemble-weight", type=float, default=0.7,
                       help="M1's share w in the ensemble w*p_M1 + (1-w)*p_M2")
    train.add_argument("--focal-weight", type=float, default=None,
                       help="choice/sequence: instances M1 gets right weigh 1 + this (default 0; choice, where A2 "
                            "beats A1 on validation: 5)")
    train.add_argument("--train-on", choices=("disagreement", "all"), default=None,
                       help="choice: train on the instances whose target differs from A2's choice distribution "
                            "(plus as many others as anchors), or on all (default: disagreement; where A2 beats A1 "
                            "on validation: all)")
    train.add_argument("--every-choice", action="store_true",
                       help="token, multiple choice: distil on the text of every choice (what the gate compares), "
                            "not only the gold answer's; pair it with --mask none or old-correct, which do not "
                            "read the text as the right answer")
    train.add_argument("--add-modules", default="",
                       help="comma-separated modules the compatibility adapter adapts beyond A2's (same rank; "
                            "they start at zero, so training starts at A2), e.g. k_proj,o_proj,gate_proj,up_proj,down_proj")
    train.add_argument("--interpolate", type=float, default=None, metavar="ALPHA",
                       help="start from the two stacks' weights interpolated, ALPHA·old + (1 − ALPHA)·new, base "
                            "included, as a LoRA on the new base (needs one architecture; 0: start from A2; "
                            "default where the bases share an architecture: validation picks among 0.25, 0.5 "
                            "and 0.75 by the selection rule, else 0)")
    train.add_argument("--acc-tolerance", type=float, default=0.005,
                       help="epoch selection: validation accuracy (score) may fall this far below A2's")
    train.add_argument("--precompute-teachers", action="store_true",
                       help="token: run both teachers once (top-k logits on disk); training holds only the student")
    train.add_argument("--top-k", type=int, default=64, help="token: teacher logits kept per token when precomputing")
    train.add_argument("--cache", help="result cache for the teachers' predictions (default: the gate's, "
                                       "$MODELCOMPAT_HOME/results)")
    train.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")

    finetune = sub.add_parser("finetune", help="train a plain LoRA task adapter (cross-entropy)",
                              formatter_class=_HelpFormatter)
    _training_options(finetune, mode="finetune")
    finetune.add_argument("--base", required=True, help="base model dir, .gguf file or hub name")
    finetune.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    finetune.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scale alpha / r)")
    finetune.add_argument("--target-modules", default="q_proj,v_proj", help="comma-separated module names")

    # the run's constants (batch size, noise margin, devices, dtypes): one owner for argparse and pytest
    from pytest_modelcompat import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_DEVICE,
        DEFAULT_DTYPE,
        DEFAULT_NOISE_MARGIN,
        DEVICE_FORMS,
        DTYPES,
    )

    ev = sub.add_parser("eval", help="the gate's metrics and thresholds outside pytest",
                        formatter_class=_HelpFormatter)
    ev.add_argument("--suite", required=True, help="suite YAML (modelcompat.yaml / compat_*.yaml)")
    ev.add_argument("--task", action="append", help="task name (repeatable; default: all tasks)")
    ev.add_argument("--old-adapter", help="A1: the old stack's adapter dir (not with --baseline)")
    ev.add_argument("--new-adapter", help="A2: the new stack's adapter dir (not with --save-baseline)")
    ev.add_argument("--old-base", help="B1 (default: A1's base_model_name_or_path)")
    ev.add_argument("--new-base", help="B2 (default: A2's base_model_name_or_path)")
    ev.add_argument("--report", help="directory for report.json / report.md / report.html")
    ev.add_argument("--save-baseline", metavar="FILE",
                    help="score the old stack only and write its predictions to FILE (a baseline snapshot, "
                         "docs/baseline.md); needs --old-adapter, no --new-adapter")
    ev.add_argument("--baseline", metavar="FILE",
                    help="gate --new-adapter against the snapshot FILE; no old model is loaded")
    ev.add_argument("--limit", type=int, help="first N instances per task")
    ev.add_argument("--cache", help="result cache dir (default: $MODELCOMPAT_HOME/results, "
                                    "~/.cache/pytest-modelcompat/results); shared with the pytest plugin")
    ev.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    ev.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                    help="packed rows (one per context) per forward pass")
    ev.add_argument("--noise-margin", type=float, default=None,
                    help="flips with decision margins (or |D(x)|) below this on both sides are 'unstable' "
                         f"(default {DEFAULT_NOISE_MARGIN}; docs/margins.md)")
    ev.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEVICE",
                    help=f"{DEVICE_FORMS}; auto: CUDA when available; under accelerate launch, auto and cuda "
                         f"put each process on its own GPU")
    ev.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE, help="weights and compute dtype")
    _trust_options(ev)
    return parser


def _train_config(args: argparse.Namespace):
    from muscle.trainer import TrainConfig

    common = dict(suite=args.suite, task=args.task, output=args.output, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, limit=args.limit,
                  val_rows=args.val_rows,
                  resume=args.resume, select=args.select, device=args.device, dtype=args.dtype,
                  allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    if args.command == "finetune":
        return TrainConfig(mode="finetune", base=args.base, rank=args.rank, alpha=args.alpha,
                           target_modules=_module_list(args.target_modules), **common)
    return TrainConfig(mode="train", old_adapter=args.old_adapter, new_adapter=args.new_adapter,
                       old_base=args.old_base, base=args.new_base, objective=args.objective, mask=args.mask,
                       temperature=args.temperature, ce_weight=args.ce_weight, old_target=args.old_target,
                       new_target=args.new_target,
                       ensemble_weight=args.ensemble_weight, focal_weight=args.focal_weight, train_on=args.train_on,
                       every_choice=args.every_choice,
                       acc_tolerance=args.acc_tolerance, precompute_teachers=args.precompute_teachers,
                       top_k=args.top_k, cache=args.cache, no_cache=args.no_cache,
                       add_modules=tuple(_module_list(args.add_modules)), interpolate=args.interpolate, **common)


def _module_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _eval(args: argparse.Namespace) -> int:
    """`muscle eval`: the gate's session (pytest_modelcompat.session) driven from the command line.

    Under ``accelerate launch`` every process scores a share of each task and gets all the results
    (``scoring/processes.py``); the main process alone writes and prints, every process exits with
    the verdict's code."""
    from rich.console import Console

    from pytest_modelcompat import Session, SessionOptions, launched_processes, terminal_table

    options = SessionOptions.create(
        entry_point="muscle", old_adapter=args.old_adapter, new_adapter=args.new_adapter, old_base=args.old_base,
        new_base=args.new_base, save_baseline=args.save_baseline, baseline=args.baseline, limit=args.limit,
        batch_size=args.batch_size, noise_margin=args.noise_margin, device=args.device, dtype=args.dtype,
        report_dir=args.report, cache_dir=args.cache, no_cache=args.no_cache, allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    session = Session(options, processes=launched_processes(options.device))
    tasks = _eval_tasks(args)
    for task in tasks:  # data, templates and snapshot coverage: refused before the (slow) model loads
        session.check_task(task)
    session.check_stacks()
    if session.mode == "save":
        return _save_baseline(session, tasks)
    records = [session.evaluate(task, nodeid=f"{args.suite}::{task.name}", suite=args.suite).record
               for task in tasks]
    if session.is_main_process:
        console = Console()
        sys.stdout.write(terminal_table(records, width=console.width, color=console.is_terminal))
        for path in session.write_reports(records).values():
            print(f"wrote {path}")
    return 0 if all(r["entry"]["gate"]["passed"] for r in records) else 1


def _eval_tasks(args: argparse.Namespace) -> list:
    """The suite's tasks `muscle eval --task` selects (all without --task)."""
    from pytest_modelcompat import load_suite

    tasks = load_suite(args.suite)
    if args.task:
        unknown = sorted(set(args.task) - {t.name for t in tasks})
        if unknown:
            raise CompatInputError(f"task(s) {', '.join(unknown)} not in {args.suite}; "
                                   f"choose from {', '.join(t.name for t in tasks)}")
        tasks = [t for t in tasks if t.name in args.task]
    return tasks


def _save_baseline(session, tasks) -> int:
    """`muscle eval --save-baseline FILE`: score the old stack only and write the snapshot."""
    scored = [session.score_baseline(task) for task in tasks]
    path, stack = session.write_baseline(scored)
    if session.is_main_process:
        print(f"wrote {path} (baseline snapshot: {len(scored)} task(s), "
              f"{sum(item['entry']['n'] for item in scored)} instances; old stack {stack['fingerprint'][:12]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            return _eval(args)
        from muscle.trainer import train

        record = train(_train_config(args))
        if record is not None:
            print(f"wrote {args.output} ({record['kept']} kept by validation {record['selection']})")
        return 0
    except CompatInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
