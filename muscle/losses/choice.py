r"""The ``choice`` objective: multiple choice, distillation of *choice distributions*.

Per training instance with choices c = 1..C and gold g, the student's choice log-likelihoods ℓ_S
come from one packed forward (the gate's own scoring trees, with gradients); the teachers' ℓ_1
(old stack M1) and ℓ_2 (new stack M2) are the gate's own cached predictions on the train split.
Where the task uses ``acc_norm`` every ℓ is divided by the choice's length in characters first,
as the gate decides. At temperature T:

    p_k   = softmax(ℓ_k / T)                    k ∈ {S, 1, 2}
    p_ens = w·p_1 + (1 − w)·p_2                 the old/new ensemble (w = ensemble_weight)
    p_old = p_1, or p_ens with old_target="ensemble";  p_new = p_2, or p_ens with new_target="ensemble"
    t     = m·p_old + (1 − m)·p_new             m ∈ {0, 1} from the mask (one per instance)
    a     = 1 + f·[M1 right]                    focal weight f (PCT), a = 1 for f = 0
    L_comp = Σ_i a_i·KL(t_i ‖ p_S,i) / Σ_i a_i
    L_ce   = Σ_i a_i·CE(softmax(ℓ_S,i), g_i) / Σ_i a_i
    L      = (1 − λ_ce)·L_comp + λ_ce·L_ce

The focal weight a weighs both terms, as the sequence objective's weighs its cross-entropy: a wrong
answer where M1 was right is a negative flip, so it costs 1 + f times a wrong answer M1 shared
(PCT's focal idea). With λ_ce = 1 and f > 0 that is a weighted fine-tuning on the gold choice, which
needs no teacher but M1's choice per instance.

The default (muscle.objectives) is mask ``old-correct`` with M1's and M2's own distributions; the
old/new ensemble (``old_target="ensemble"``, as PCT / ELODI distil towards an ensemble, which flips
less than either model) is there for ablations: benchmarks/results/compat.md has both.

The KL uses ``xlogy`` so a teacher probability of exactly 0 (a −inf log-likelihood) adds 0, not NaN.

Masks at instance level (1 = keep the old behaviour, computed without gradient, at T = 1):
    paper        student's current choice is wrong                 (the paper's "student errs")
    ll-token     student's log p(g) < M1's (choice distribution)   (the token mask's instance form)
    ll-seq       the same comparison; at instance level the two coincide
    old-correct  M1's choice is right
    none         always
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OLD_TARGETS = ("m1", "ensemble")
NEW_TARGETS = ("m2", "ensemble")


def choice_log_probs(logliks: torch.Tensor, lengths: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """log softmax over choices of ℓ / T ([n, C]; padded choices are −inf), ℓ length-normalised
    when ``lengths`` (characters per choice) is given."""
    if lengths is not None:
        logliks = logliks / lengths
    return F.log_softmax(logliks / temperature, dim=-1)


@torch.no_grad()
def instance_mask(mask: str, student: torch.Tensor, old: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """m ∈ {0, 1} per instance (float [n]); ``student``/``old`` are log-probs over choices at T = 1."""
    if mask == "paper":
        m = student.argmax(-1) != gold
    elif mask in ("ll-token", "ll-seq"):
        m = student.gather(-1, gold[:, None])[:, 0] < old.gather(-1, gold[:, None])[:, 0]
    elif mask == "old-correct":
        m = old.argmax(-1) == gold
    elif mask == "none":
        m = torch.ones_like(gold, dtype=torch.bool)
    else:
        raise ValueError(f"unknown mask {mask!r}")
    return m.to(student.dtype)


def _terms(student, old, new, gold, lengths, mask, temperature, old_target, new_target, ensemble_weight,
           focal_weight):
    """Per instance: (KL(t ‖ p_S), focal weight a, mask m, the student's log-probs at T = 1)."""
    log_p_s = choice_log_probs(student, lengths, temperature)
    p_1 = choice_log_probs(old, lengths, temperature).exp()
    p_2 = choice_log_probs(new, lengths, temperature).exp()
    ensemble = ensemble_weight * p_1 + (1 - ensemble_weight) * p_2
    if old_target not in OLD_TARGETS or new_target not in NEW_TARGETS:
        raise ValueError(f"unknown targets {old_target!r}/{new_target!r}; old side: {', '.join(OLD_TARGETS)}, "
                         f"new side: {', '.join(NEW_TARGETS)}")
    p_old = ensemble if old_target == "ensemble" else p_1
    p_new = ensemble if new_target == "ensemble" else p_2
    old_at_1 = choice_log_probs(old, lengths, 1.0)
    student_at_1 = choice_log_probs(student.detach(), lengths, 1.0)
    m = instance_mask(mask, student_at_1, old_at_1, gold)
    target = m[:, None] * p_old + (1 - m[:, None]) * p_new
    finite = torch.isfinite(log_p_s)
    kl = (torch.xlogy(target, target) - torch.where(finite, target * log_p_s, 0.0)).sum(-1)
    weight = 1 + focal_weight * (old_at_1.argmax(-1) == gold).to(kl.dtype)
    return kl, weight, m, student_at_1


def choice_loss(student: torch.Tensor, old: torch.Tensor, new: torch.Tensor, gold: torch.Tensor, *,
                lengths: torch.Tensor | None = None, mask: str = "none", temperature: float = 2.0,
                old_target: str = "m1", new_target: str = "m2", ensemble_weight: float = 0.7,
                focal_weight: float = 0.0, ce_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss above. ``student``/``old``/``new``: choice log-likelihoods [n, C] (−inf pads)."""
    kl, weight, m, student_at_1 = _terms(student, old, new, gold, lengths, mask, temperature, old_target,
                                         new_target, ensemble_weight, focal_weight)
    comp = (weight * kl).sum() / weight.sum()
    ce = (weight * F.cross_entropy(choice_log_probs(student, lengths, 1.0), gold, reduction="none")).sum() / weight.sum()
    loss = (1 - ce_weight) * comp + ce_weight * ce if ce_weight else comp
    stats = {"loss": loss.item(), "kl": comp.item(), "ce": ce.item(), "mask_old": m.mean().item(),
             "student_acc": (student_at_1.argmax(-1) == gold).float().mean().item()}
    return loss, stats


@torch.no_grad()
def starting_divergence(old: torch.Tensor, new: torch.Tensor, gold: torch.Tensor, *,
                        lengths: torch.Tensor | None = None, mask: str = "none", temperature: float = 2.0,
                        old_target: str = "m1", new_target: str = "m2", ensemble_weight: float = 0.7) -> torch.Tensor:
    """Per instance, KL(t ‖ p_S) before training, when the student is still A2 (ℓ_S = ℓ_2): how much
    the instance has to teach. Where the target already equals M2's distribution it is ~0 and so
    is the instance's gradient."""
    return _terms(new, old, new, gold, lengths, mask, temperature, old_target, new_target, ensemble_weight, 0.0)[0]
