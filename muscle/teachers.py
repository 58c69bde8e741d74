"""Teacher-logit precomputation: run a frozen teacher once, keep top-k per target token on disk.

With both teachers precomputed, training holds only the student in memory. Per target token we
store the k largest logits and their ids, the log-normaliser logsumexp(z) and the gold token's logit
(T = 1) — what ``muscle.losses.token.TopKLogits`` needs: the top-k KL approximation documented there, and
the exact gold log-probability / argmax the masks use. One safetensors file per teacher, rows in
example order, ``offsets[i]:offsets[i + 1]`` = the rows of example i.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from muscle.data import Example, collate
from muscle.losses.targets import select_targets, target_logits
from muscle.losses.token import TopKLogits
from pytest_modelcompat import atomic_write

if TYPE_CHECKING:
    import torch

FIELDS = ("logits", "indices", "log_normalizer", "gold_logit")


def teacher_logits(model, batch: dict[str, torch.Tensor], adapter: str | None = None) -> torch.Tensor:
    """A frozen teacher's logits [N, V] at the batch's target positions (``adapter`` picks one of
    several adapters loaded on a shared base, without touching the student's active adapter)."""
    import torch

    kwargs = {"adapter_names": [adapter] * len(batch["input_ids"])} if adapter else {}
    was_training = model.training
    model.eval()  # PEFT's per-sample adapter routing requires eval mode; teachers run without dropout
    try:
        with torch.no_grad():
            return target_logits(model, batch, **kwargs)
    finally:
        model.train(was_training)


def precompute(model, examples: list[Example], path: Path, *, k: int, batch_size: int, pad_id: int,
               device, adapter: str | None = None, progress=None) -> None:
    """Write the teacher's top-k store for ``examples`` (indexed by ``Example.index``) to ``path``.

    Batches are formed from length-sorted examples (teacher passes are order-free, so padding is
    only what a batch of near-equal lengths needs); the store is laid out in index order."""
    import torch
    from safetensors.torch import save

    if sorted(e.index for e in examples) != list(range(len(examples))):
        raise ValueError("precompute needs examples indexed 0..n-1")
    by_length = sorted(examples, key=lambda e: (len(e.input_ids), e.index))
    per_example: list[TopKLogits | None] = [None] * len(examples)
    task = progress.add_task("teacher logits", total=len(examples)) if progress else None
    for start in range(0, len(by_length), batch_size):
        chunk = by_length[start:start + batch_size]
        batch = {key: value.to(device) for key, value in collate(chunk, pad_id).items()}
        logits, (targets, sequence) = teacher_logits(model, batch, adapter), select_targets(batch["labels"])
        top = TopKLogits.from_logits(logits.float(), targets, k)
        for row, example in enumerate(chunk):
            rows = (sequence == row).nonzero()[:, 0]
            per_example[example.index] = TopKLogits(*(getattr(top, name)[rows].cpu() for name in FIELDS))
        if progress:
            progress.advance(task, len(chunk))
    offsets = torch.tensor([0] + [len(top.gold_logit) for top in per_example]).cumsum(0)
    tensors = {name: torch.cat([getattr(top, name) for top in per_example]).contiguous() for name in FIELDS}
    atomic_write(path, save(tensors | {"offsets": offsets}))


class TeacherStore:
    """A precomputed teacher, loaded from disk; ``batch(indices)`` gives its rows for one batch."""

    def __init__(self, path: Path):
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.offsets = tensors.pop("offsets").tolist()
        self.tensors = tensors

    def batch(self, indices: torch.Tensor, device) -> TopKLogits:
        """Rows of the examples in ``indices``, in batch order — the order ``select_targets`` uses."""
        import torch

        rows = torch.cat([torch.arange(self.offsets[i], self.offsets[i + 1]) for i in indices.tolist()])
        return TopKLogits(*(self.tensors[name][rows].to(device) for name in FIELDS))
