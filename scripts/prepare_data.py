"""Write the example suite's shippable data files from the shared datasets.

    python scripts/prepare_data.py [--shared-data ../shared/data] [--out example_suite/data]

PIQA (AFL-3.0) and SST-2 (GLUE research data) are written as jsonl with the gold label merged into
each row and the source row number kept as ``idx`` (the suite uses it as the stable instance id).
SAMSum (CC BY-NC-ND) is never copied: the suite reads it from ``$MODELCOMPAT_SAMSUM``.

Subsets are deterministic (fixed seed), so re-running the script reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from pytest_modelcompat import atomic_write

REPO = Path(__file__).resolve().parents[1]
TRAIN_ROWS = 2000  # enough for a LoRA task adapter on 2 CPU cores in a few minutes
SEED = 0


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def piqa_rows(piqa: Path, split: str) -> list[dict]:
    """PIQA rows of one split (in the ``piqa`` data dir) with ``label`` (0 = sol1, 1 = sol2) from the
    aligned ``*-labels.lst`` file."""
    with open(piqa / f"{split}.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    labels = (piqa / f"{split}-labels.lst").read_text().split()
    if len(docs) != len(labels):
        raise SystemExit(f"piqa/{split}: {len(docs)} rows but {len(labels)} labels")
    return [{"idx": i, **doc, "label": int(label)} for i, (doc, label) in enumerate(zip(docs, labels))]


def sst2_rows(tsv: Path) -> list[dict]:
    """SST-2 rows of one split's TSV (``sentence<TAB>label``), ``idx`` = the row number."""
    with open(tsv, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"idx": i, "sentence": row["sentence"].strip(), "label": int(row["label"])}
                for i, row in enumerate(reader)]


def sample(rows: list[dict], n: int) -> list[dict]:
    """A seeded sample of ``n`` rows, kept in source order."""
    picked = sorted(random.Random(SEED).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "example_suite" / "data")
    args = parser.parse_args(argv)

    # PIQA train rows 0..7999 are reserved for the task adapters; build_base_v2.py uses the rest.
    outputs = {
        "piqa_train.jsonl": sample(piqa_rows(args.shared_data / "piqa", "train")[:8000], TRAIN_ROWS),
        "piqa_valid.jsonl": piqa_rows(args.shared_data / "piqa", "valid"),
        "sst2_train.jsonl": sample(sst2_rows(args.shared_data / "sst2" / "train.tsv"), TRAIN_ROWS),
        "sst2_dev.jsonl": sst2_rows(args.shared_data / "sst2" / "dev.tsv"),
    }
    for name, rows in outputs.items():
        atomic_write(args.out / name, _jsonl(rows))
        print(f"{args.out / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
