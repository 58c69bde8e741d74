"""`muscle`: train compatibility adapters (train), task adapters (finetune), and run the gate (eval).

Exit codes: 0 ok, 1 gate failed, 2 usage or input error (one line on stderr, no traceback).
Runs as is on one device, or under ``accelerate launch`` for several processes / GPUs / nodes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_modelcompat.errors import CompatInputError

EPILOG = """examples:
  muscle finetune --suite modelcompat.yaml --task piqa --base v1/ --output a1/
  muscle finetune --suite modelcompat.yaml --task piqa --base v2/ --output a2/
  muscle eval --suite modelcompat.yaml --old-adapter a1/ --new-adapter a2/ --report report/
  muscle train --suite modelcompat.yaml --task piqa --old-adapter a1/ --new-adapter a2/ --output a2c/
  accelerate launch --num_processes 2 -m muscle.cli train ...      (multi-process / multi-GPU)
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
    p.add_argument("--suite", required=True, help="suite YAML (modelcompat.yaml / compat_*.yaml)")
    p.add_argument("--task", required=True, help="task name in the suite; trains on its `train:` file")
    p.add_argument("--output", required=True, help="output adapter dir (written atomically at the end)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the train split")
    from muscle.trainer import DEFAULT_LR

    p.add_argument("--lr", type=float, default=DEFAULT_LR[mode], help="AdamW learning rate (linear decay to 0)")
    p.add_argument("--batch-size", type=int, default=8, help="training examples per optimizer step")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (prompt cut from the left)")
    p.add_argument("--seed", type=int, default=0, help="seeds the 80/20 split, shuffling and init")
    p.add_argument("--limit", type=int, help="use only the first N rows of the train file")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in .OUT.work/")
    p.add_argument("--select", choices=("nfr", "loss"),
                   help="epoch selection on the 20%% validation split (train: nfr vs M1, finetune: loss)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="weights and compute dtype")
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
    train.add_argument("--ce-weight", type=float, default=0.0,
                       help="weight of the auxiliary cross-entropy on the gold answer: L = (1-w) L_comp + w CE")
    train.add_argument("--old-target", choices=("m1", "ensemble"),
                       help="choice: where the mask says 'old', imitate M1 or the M1/M2 ensemble "
                            "(default: m1)")
    train.add_argument("--new-target", choices=("m2", "ensemble"), default="m2",
                       help="choice: where the mask says 'new', imitate M2 or the M1/M2 ensemble")
    train.add_argument("--ensemble-weight", type=float, default=0.7,
                       help="M1's share w in the ensemble w*p_M1 + (1-w)*p_M2")
    train.add_argument("--focal-weight", type=float, default=0.0,
                       help="choice/sequence: instances M1 gets right weigh 1 + this")
    train.add_argument("--train-on", choices=("disagreement", "all"), default="disagreement",
                       help="choice: train on the instances whose target differs from A2's choice distribution "
                            "(plus as many others as anchors), or on all")
    train.add_argument("--add-modules", default="",
                       help="comma-separated modules the compatibility adapter adapts beyond A2's (same rank; "
                            "they start at zero, so training starts at A2), e.g. k_proj,o_proj,gate_proj,up_proj,down_proj")
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
    ev.add_argument("--batch-size", type=int, default=16, help="packed rows (one per context) per forward pass")
    ev.add_argument("--noise-margin", type=float, default=None,
                    help="flips with decision margins (or |D(x)|) below this on both sides are 'unstable' "
                         "(default 0.01; docs/margins.md)")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when available")
    ev.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="weights and compute dtype")
    _trust_options(ev)
    return parser


def _train_config(args: argparse.Namespace):
    from muscle.trainer import TrainConfig

    common = dict(suite=args.suite, task=args.task, output=args.output, epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, limit=args.limit,
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
                       acc_tolerance=args.acc_tolerance, precompute_teachers=args.precompute_teachers,
                       top_k=args.top_k, cache=args.cache, no_cache=args.no_cache,
                       add_modules=tuple(_module_list(args.add_modules)), **common)


def _module_list(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pytest_modelcompat import evaluate
    from pytest_modelcompat.atomic import check_writable_dir
    from pytest_modelcompat.cache import ResultCache, cache_home
    from pytest_modelcompat.progress import make_progress
    from pytest_modelcompat.report import (
        muscle_train_command,
        stack_meta,
        task_record,
        terminal_table,
        write_reports,
    )
    from pytest_modelcompat.stack import check_stack_files, load_stack
    from pytest_modelcompat.suite import load_instances, load_suite, resolve_task

    if args.limit is not None and args.limit < 1:
        raise CompatInputError(f"--limit must be a positive integer, got {args.limit}")
    if args.batch_size < 1:
        raise CompatInputError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.noise_margin is not None and not (args.noise_margin >= 0 and args.noise_margin != float("inf")):
        raise CompatInputError(f"--noise-margin must be a number >= 0, got {args.noise_margin}")
    _check_eval_mode(args)
    if args.report:
        check_writable_dir(args.report, "--report")
    if args.save_baseline:
        from pytest_modelcompat.baseline import check_save_path

        check_save_path(args.save_baseline, "--save-baseline")
    snapshot = None
    if args.baseline:
        from pytest_modelcompat.baseline import load_snapshot

        snapshot = load_snapshot(args.baseline, entry_point="muscle")
    if args.cache and not args.no_cache:
        check_writable_dir(args.cache, "--cache")
    tasks = load_suite(args.suite)
    if args.task:
        unknown = sorted(set(args.task) - {t.name for t in tasks})
        if unknown:
            raise CompatInputError(f"task(s) {', '.join(unknown)} not in {args.suite}; "
                                   f"choose from {', '.join(t.name for t in tasks)}")
        tasks = [t for t in tasks if t.name in args.task]
    for task in tasks:  # data and template problems surface before the (slow) model loads
        if task.lm_eval is None:
            instances = load_instances(task, limit=evaluate.effective_limit(args.limit, task.limit))
            if snapshot is not None:  # a snapshot that does not cover the task: refused before any model
                snapshot.check_instances(task, instances)
    trust = {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}
    for which in ("old", "new"):  # both checked before the first (slow) model load
        if getattr(args, f"{which}_adapter") is not None:
            check_stack_files(getattr(args, f"{which}_adapter"), getattr(args, f"{which}_base"),
                              allow_pickle=args.allow_pickle, which=which)
    load = {"device": args.device, "dtype": args.dtype, **trust}
    cache = None if args.no_cache else ResultCache(Path(args.cache) if args.cache else cache_home() / "results")
    if args.save_baseline:
        return _save_baseline(args, tasks, load_stack(args.old_adapter, args.old_base, **load), cache)
    old = snapshot if snapshot is not None else load_stack(args.old_adapter, args.old_base, **load)
    new = load_stack(args.new_adapter, args.new_base, **load)
    old_meta = dict(snapshot.stack) if snapshot is not None else stack_meta(old)
    records = []
    for task in tasks:
        with make_progress(transient=True) as progress:
            result = evaluate.evaluate_task(old, new, resolve_task(task), limit=args.limit, batch_size=args.batch_size,
                                            cache=cache, progress=progress, noise_margin=args.noise_margin)
        command = muscle_train_command(suite=args.suite, task=task.name,
                                       old_adapter=args.old_adapter or old_meta["adapter"],
                                       new_adapter=args.new_adapter,
                                       old_base=old_meta["base"] if snapshot is not None else args.old_base,
                                       new_base=args.new_base)
        records.append(task_record(result, old_meta, stack_meta(new), nodeid=f"{args.suite}::{task.name}",
                                   muscle_command=command))
    console = Console()
    sys.stdout.write(terminal_table(records, width=console.width, color=console.is_terminal))
    if args.report:
        for path in write_reports(Path(args.report), records).values():
            print(f"wrote {path}")
    return 0 if all(r["entry"]["gate"]["passed"] for r in records) else 1


def _check_eval_mode(args: argparse.Namespace) -> None:
    """Which adapters / snapshot options of `muscle eval` go together (CompatInputError otherwise)."""
    if args.baseline:
        if args.old_adapter:
            raise CompatInputError("--old-adapter and --baseline are both given; the snapshot stands for the old "
                                   "stack: drop --old-adapter (or --baseline to load the old model)")
        if args.save_baseline:
            raise CompatInputError("--save-baseline and --baseline are both given; save a snapshot (with "
                                   "--old-adapter) or gate against one (with --new-adapter), not both")
        if not args.new_adapter:
            raise CompatInputError("--baseline is given but --new-adapter is not; pass the adapter to gate against "
                                   "the snapshot: --new-adapter PATH")
    elif args.save_baseline:
        if not args.old_adapter:
            raise CompatInputError("--save-baseline is given but --old-adapter is not; pass the adapter whose "
                                   "predictions to save: --old-adapter PATH")
        if args.new_adapter:
            raise CompatInputError("--save-baseline scores the old stack only; drop --new-adapter (gate it later "
                                   "with --baseline FILE --new-adapter PATH)")
    elif not (args.old_adapter and args.new_adapter):
        missing = " and ".join(flag for flag, value in (("--old-adapter", args.old_adapter),
                                                         ("--new-adapter", args.new_adapter)) if not value)
        raise CompatInputError(f"{missing} missing: pass --old-adapter A1 --new-adapter A2 (or --old-adapter A1 "
                               f"--save-baseline FILE, or --baseline FILE --new-adapter A2)")


def _save_baseline(args: argparse.Namespace, tasks, old, cache) -> int:
    """`muscle eval --save-baseline FILE`: score the old stack only and write the snapshot."""
    from pytest_modelcompat import evaluate
    from pytest_modelcompat.baseline import write_snapshot
    from pytest_modelcompat.progress import make_progress
    from pytest_modelcompat.report import stack_meta
    from pytest_modelcompat.suite import resolve_task

    entries = []
    for task in tasks:
        with make_progress(transient=True) as progress:
            entries.append(evaluate.baseline_entry(old, resolve_task(task), limit=args.limit, cache=cache,
                                                   batch_size=args.batch_size, progress=progress))
    path = write_snapshot(args.save_baseline, stack_meta(old), entries)
    print(f"wrote {path} (baseline snapshot: {len(entries)} task(s), "
          f"{sum(entry['n'] for entry in entries)} instances; old stack {old.fingerprint[:12]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "eval":
            return _eval(args)
        from muscle.trainer import train

        record = train(_train_config(args))
        if record is not None:
            print(f"wrote {args.output} (epoch {record['chosen_epoch']} chosen by validation {record['selection']})")
        return 0
    except CompatInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
