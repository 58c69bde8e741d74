r"""The ``sequence`` objective: exact-match and generative tasks, cross-entropy on a teacher's output.

The teachers' greedy outputs on the train split are the gate's own cached predictions (text and
score: exact-match correctness as 0/1, or the task's similarity to the gold). Per instance the mask
picks whose output the student learns (m = 1: M1's, the old behaviour; m = 0: M2's, the new):

    paper        s_1 > s_2    M1 strictly better than M2, where the student starts; ties keep M2's
                              output (the paper keeps the new model wherever it does not err)
    old-correct  s_1 ≥ s_2    M1 at least as good (exact match: M1 right); ties go to M1
    none         always M1
    ll-token / ll-seq need the teachers' log-likelihoods of the gold text, which the gate does
    not record for generation: refused for this objective.

    L_comp = Σ_i a_i Σ_t CE(z_S,i,t, target_i,t) / Σ_i a_i·|target_i|      a_i = 1 + f·[s_1 ≥ s_2 and s_1 > 0]
    L      = (1 − λ_ce)·L_comp + λ_ce·CE(student, gold)

Targets are text, tokenised by the student's own tokenizer: it works across tokenizers. There is
no distribution to soften, so the temperature does not apply. An empty chosen output falls back
to the other teacher's, then to the gold text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SEQUENCE_MASKS = ("paper", "old-correct", "none")


def pick_targets(mask: str, old_scores: Sequence[float], new_scores: Sequence[float]) -> list[bool]:
    """Per instance: True = learn M1's output, False = M2's (the rule in the module docstring)."""
    if mask == "paper":
        return [s1 > s2 for s1, s2 in zip(old_scores, new_scores, strict=True)]
    if mask == "old-correct":
        return [s1 >= s2 for s1, s2 in zip(old_scores, new_scores, strict=True)]
    if mask == "none":
        return [True] * len(old_scores)
    raise ValueError(f"mask {mask!r} is not defined for the sequence objective; use one of "
                     f"{', '.join(SEQUENCE_MASKS)}")


def target_texts(use_old: Sequence[bool], old_texts: Sequence[str], new_texts: Sequence[str],
                 golds: Sequence[str]) -> list[str]:
    """The text each instance is trained on: the chosen teacher's, else the other's, else the gold."""
    texts = []
    for old_first, old, new, gold in zip(use_old, old_texts, new_texts, golds, strict=True):
        first, second = (old, new) if old_first else (new, old)
        texts.append(next((t for t in (first, second) if t.strip()), gold))
    return texts


def focal_weights(old_scores: Sequence[float], new_scores: Sequence[float], focal_weight: float) -> list[float]:
    """a_i = 1 + f·[M1 scores at least as well as M2, and above 0]: weight where M1 did well."""
    return [1.0 + focal_weight * (s1 >= s2 and s1 > 0) for s1, s2 in zip(old_scores, new_scores, strict=True)]


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, sequence: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target tokens, each weighted by its sequence's ``weights[row]``,
    normalised by the weighted token count. ``logits`` [N, V] are the student's at the target
    positions only, ``targets`` [N] their tokens and ``sequence`` [N] their rows
    (``muscle.losses.targets.target_logits`` / ``select_targets``): with Gemma-3's 262k vocabulary a
    head over every position of a batch of 8 × 384 tokens would be 3.2 GB per float32 copy."""
    token_ce = F.cross_entropy(logits.float(), targets, reduction="none")
    token_weight = weights[sequence].to(token_ce.dtype)
    return (token_weight * token_ce).sum() / token_weight.sum()
