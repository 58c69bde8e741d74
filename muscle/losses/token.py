r"""The ``token`` objective: the MUSCLE paper's loss (arXiv 2407.09435) and its mask strategies.

Everything here works on *target tokens only* (:mod:`muscle.losses.targets`: the student's and the
teachers' logits at the positions that predict a target token, one row per target token).
For target token i with gold token y_i, student logits z_S, teacher logits z_M1 (old stack) and
z_M2 (new stack), and temperature T:

    a_old_i = KL( softmax(z_M1,i / T) ‖ softmax(z_S,i / T) )
    a_new_i = KL( softmax(z_M2,i / T) ‖ softmax(z_S,i / T) )
    L_comp  = mean_i [ m_i · a_old_i + (1 − m_i) · a_new_i ]
    L       = λ · L_comp + (1 − λ) · CE(z_S, y)          (λ = 1 − ce_weight; ce_weight = 0 → L_comp)

The mean is over every target token in the batch. We follow the paper's formula (docs/muscle.md) and do **not**
multiply the KL by T² (the usual Hinton-style rescaling): with the default ce_weight = 0 the factor
would only rescale the learning rate; users mixing in CE can raise ``ce_weight`` instead.

Masks m_i (computed without gradient; probabilities at T = 1):
    paper        m_i = [argmax z_S,i ≠ y_i]                  student wrong → imitate the old model
    ll-token     m_i = [p_S(y_i) < p_M1(y_i)]
    ll-seq       one m per sequence: [Σ_i log p_S(y_i) < Σ_i log p_M1(y_i)]
    old-correct  m_i = [argmax z_M1,i = y_i]
    none         m_i = 1                                     always imitate the old model

Teachers come either as full logits (``Tensor[N, V]``) or as precomputed ``TopKLogits`` (see
muscle/teachers.py).  With top-k, the teacher distribution at T is approximated by the softmax of its
k largest logits / T, renormalised over those k tokens (zero elsewhere); the KL to the full student
distribution is then exact for that truncated teacher:  Σ_{j∈topk} p_j (log p_j − log q_j).  The
tail mass the teacher puts outside its top k is dropped; at T = 2 and k ≥ 32 it is small for LMs.
The masks need the teacher's exact log p(y_i) and argmax at T = 1, which ``TopKLogits`` keeps exactly
(gold logit and log-normaliser logsumexp(z)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from muscle.losses import MASKS


@dataclass
class TopKLogits:
    """A teacher's k largest logits per target token, plus what the masks need exactly."""

    logits: torch.Tensor          # [N, k] the k largest logits (T = 1), descending
    indices: torch.Tensor         # [N, k] their token ids
    log_normalizer: torch.Tensor  # [N]    logsumexp over the full vocabulary (T = 1)
    gold_logit: torch.Tensor      # [N]    logit of the gold token y_i (T = 1)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, targets: torch.Tensor, k: int) -> TopKLogits:
        top = logits.topk(min(k, logits.shape[-1]), dim=-1)
        return cls(top.values, top.indices, logits.logsumexp(-1), logits.gather(-1, targets[:, None])[:, 0])


Teacher = torch.Tensor | TopKLogits


def kl_to_student(teacher: Teacher, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token KL(teacher_T ‖ student_T), shape [N]."""
    log_q = F.log_softmax(student / temperature, dim=-1)
    if isinstance(teacher, TopKLogits):
        log_p = F.log_softmax(teacher.logits / temperature, dim=-1)
        log_q = log_q.gather(-1, teacher.indices)
    else:
        log_p = F.log_softmax(teacher / temperature, dim=-1)
    p = log_p.exp()
    # xlogy: a teacher probability of exactly 0 (a −inf logit) contributes 0, not 0·(−inf) = NaN.
    return (torch.xlogy(p, p) - p * log_q).sum(-1)


def gold_logprob(teacher: Teacher, targets: torch.Tensor) -> torch.Tensor:
    """log p(y_i) at T = 1, shape [N]."""
    if isinstance(teacher, TopKLogits):
        return teacher.gold_logit - teacher.log_normalizer
    return F.log_softmax(teacher, dim=-1).gather(-1, targets[:, None])[:, 0]


def argmax(teacher: Teacher) -> torch.Tensor:
    return teacher.indices[:, 0] if isinstance(teacher, TopKLogits) else teacher.argmax(-1)


@torch.no_grad()
def compatibility_mask(mask: str, student: torch.Tensor, old: Teacher, targets: torch.Tensor,
                       sequence: torch.Tensor) -> torch.Tensor:
    """m_i ∈ {0, 1} as float, shape [N]: 1 = align to the old model (M1), 0 = to the new (M2)."""
    if mask == "paper":
        m = student.argmax(-1) != targets
    elif mask == "ll-token":
        m = gold_logprob(student, targets) < gold_logprob(old, targets)
    elif mask == "ll-seq":
        n_seq = int(sequence.max()) + 1 if sequence.numel() else 0
        per_seq = torch.zeros(n_seq, dtype=student.dtype, device=student.device)
        diff = gold_logprob(student, targets) - gold_logprob(old, targets)
        m = (per_seq.index_add(0, sequence, diff) < 0)[sequence]
    elif mask == "old-correct":
        m = argmax(old) == targets
    elif mask == "none":
        m = torch.ones_like(targets, dtype=torch.bool)
    else:
        raise ValueError(f"unknown mask {mask!r}; choose one of {', '.join(MASKS)}")
    return m.to(student.dtype)


def needs_new_teacher(mask: str) -> bool:
    """Mask ``none`` gives the new side a weight of 0 on every token: M2 need not run at all."""
    return mask != "none"


def muscle_loss(student: torch.Tensor, targets: torch.Tensor, sequence: torch.Tensor, old: Teacher,
                new: Teacher | None, *, mask: str = "paper", temperature: float = 2.0,
                ce_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss above over N target tokens; returns (loss, stats for logging). ``new`` may be None
    only where ``needs_new_teacher(mask)`` is false."""
    m = compatibility_mask(mask, student.detach(), old, targets, sequence)
    weighted = m * kl_to_student(old, student, temperature)
    if needs_new_teacher(mask):
        weighted = weighted + (1 - m) * kl_to_student(new, student, temperature)
    comp = weighted.mean()
    ce = F.cross_entropy(student, targets)
    loss = (1 - ce_weight) * comp + ce_weight * ce if ce_weight else comp
    return loss, {"loss": loss.item(), "kl": comp.item(), "ce": ce.item(), "mask_old": m.mean().item()}
