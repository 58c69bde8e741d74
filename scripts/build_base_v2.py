"""Train the "data update" that turns base v1 into base v2, and ship it as a small fp16 LoRA delta.

    python scripts/build_base_v2.py [--shared-data ../shared/data] [--work DIR] [--docs 480]

Base v1 is SmolLM2-135M-Instruct. Base v2 is v1 continued-pretrained on text it was not tuned on:
GSM8K train solutions (worked arithmetic, MIT) and PIQA train goals with their correct solution
(AFL-3.0; rows 8000+, disjoint from the rows the task adapters train on). The continued pretraining
is a LoRA on every linear layer trained with the project's own ``muscle finetune`` on a raw-text
task (empty prompt, loss on the whole text); merging it into v1 gives a base whose weights all moved,
like a real data update. Only the delta is shipped (``example_suite/artifacts/base_v2_delta``, fp16
safetensors), so ``python -m muscle.demo`` rebuilds v2 in seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
from pathlib import Path

from pytest_modelcompat import atomic_directory, atomic_write

REPO = Path(__file__).resolve().parents[1]
DELTA_DIR = REPO / "example_suite" / "artifacts" / "base_v2_delta"
CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")  # GSM8K's "<<48/2=24>>" markup, not prose
SEED = 0
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # every Llama linear layer

CORPUS_SUITE = """\
# Raw-text continued pretraining: no prompt, the loss covers the whole document.
tasks:
  - name: update_corpus
    kind: generative
    data: corpus.jsonl
    train: corpus.jsonl
    text: ""
    target: "{{text}}"
    delimiter: ""
"""


def corpus(shared: Path, docs: int, gsm8k_share: float = 0.5) -> list[dict]:
    """GSM8K worked solutions (``gsm8k_share`` of the docs) and PIQA goal + correct solution (the
    rest), shuffled with a fixed seed."""
    rng = random.Random(SEED)
    with open(shared / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        gsm = [json.loads(line) for line in fh]
    with open(shared / "piqa" / "train.jsonl", encoding="utf-8") as fh:
        piqa = [json.loads(line) for line in fh]
    labels = (shared / "piqa" / "train-labels.lst").read_text().split()
    n_gsm = round(docs * gsm8k_share)
    gsm_text = [f"{row['question']}\n{CALCULATOR_ANNOTATION.sub('', row['answer'])}"
                for row in rng.sample(gsm, n_gsm)]
    piqa_rows = rng.sample(range(8000, len(piqa)), docs - n_gsm)
    piqa_text = [f"{piqa[i]['goal']} {piqa[i]['sol1' if labels[i] == '0' else 'sol2']}" for i in piqa_rows]
    texts = gsm_text + piqa_text
    rng.shuffle(texts)
    return [{"idx": i, "text": text} for i, text in enumerate(texts)]


def to_fp16(adapter: Path, out: Path) -> None:
    """Copy a `muscle finetune` output dir with its LoRA weights cast to fp16 (half the bytes to ship)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")
    with atomic_directory(out) as tmp:
        save_file({k: v.half().contiguous() for k, v in weights.items()}, tmp / "adapter_model.safetensors")
        for name in ("adapter_config.json", "muscle_training.json"):  # config + training provenance
            (tmp / name).write_text((adapter / name).read_text())


def main(argv: list[str] | None = None) -> None:
    from muscle.demo import base_v1_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("build") / "base_v2")
    parser.add_argument("--docs", type=int, default=960)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--lr", default="3e-3")
    parser.add_argument("--gsm8k-share", type=float, default=0.5,
                        help="share of GSM8K docs in the corpus, the rest PIQA (0: a PIQA-only update)")
    parser.add_argument("--out", type=Path, default=DELTA_DIR, help="where the fp16 delta goes")
    args = parser.parse_args(argv)

    documents = corpus(args.shared_data, args.docs, args.gsm8k_share)
    atomic_write(args.work / "corpus.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents))
    atomic_write(args.work / "update_corpus.yaml", CORPUS_SUITE)
    trained = args.work / "delta_fp32"
    subprocess.run(
        [sys.executable, "-m", "muscle.cli", "finetune", "--suite", str(args.work / "update_corpus.yaml"),
         "--task", "update_corpus", "--base", str(base_v1_dir()), "--output", str(trained),
         "--rank", "8", "--alpha", "16", "--target-modules", ALL_LINEAR, "--epochs", str(args.epochs),
         "--lr", args.lr, "--batch-size", "8", "--max-length", str(args.max_length), "--seed", str(SEED)],
        check=True,
    )
    to_fp16(trained, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
