"""Target tokens of a causal-LM batch, shared by the ``token`` and ``sequence`` objectives.

A batch is ``input_ids`` / ``attention_mask`` / ``labels`` with labels ``-100`` on prompt and padding.
``target_logits`` runs the LM head only at the positions that predict a target token, one row per
target token; ``select_targets`` gives those tokens and the row (sequence) each belongs to, in the
same order, so a loss pairs them without ever materialising logits it does not use.
"""

from __future__ import annotations

import torch


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: position t is kept when it predicts a target token (labels[t + 1] ≠ -100)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def select_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [N], sequence [N]): the target tokens of a batch and the row each belongs to, in
    the row-major order of ``scored_positions`` — the order of ``target_logits``' rows."""
    keep = scored_positions(labels)[:, :-1]
    sequence = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(keep)
    return labels[:, 1:][keep], sequence[keep]


def target_logits(model, batch: dict[str, torch.Tensor], **forward_kwargs) -> torch.Tensor:
    """A causal LM's logits at the target positions only, [N, V] in ``select_targets``' order.

    The LM head (V = 49k for SmolLM2, 262k for Gemma-3) never runs on prompt or padding positions,
    so its time and memory scale with the answer tokens, not the whole batch (``logits_to_keep``
    as a boolean mask, as the gate's scoring engine does)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 logits_to_keep=scored_positions(batch["labels"]), **forward_kwargs).logits
