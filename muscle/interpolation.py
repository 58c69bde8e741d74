"""The student's starting point: the two stacks' weights interpolated (BCWI, arXiv 2301.10546).

    θ_α = α·θ_M1 + (1 − α)·θ_M2        θ_M = base + merged task adapter

Why: negative flips sit at the decision boundary and the two stacks make them on different
instances, so a point between the two models (like an old/new ensemble, but one model) keeps most
of what each gets right (benchmarks/results/flip_anatomy.md). Interpolating only the two *adapters*
on the new base does not help: the gap comes from the base update. So the whole stack is
interpolated, base included, and the result is expressed as a LoRA on the new base, per linear
layer: ΔW = θ_α − W_v2 = α·(W_M1 − W_v2) + (1 − α)·ΔW_A2, truncated by SVD to the rank that keeps
``ENERGY_KEPT`` of its squared Frobenius norm (at most ``max_rank``).

What LoRA cannot carry is reported, not hidden: parameters outside linear layers that differ
(embeddings, norms; the synthetic updates here change none) and the SVD's truncation, as the
fraction of ‖θ_α − θ_v2‖² the adapter reproduces (``captured``). It needs the two bases to share an
architecture and parameter shapes (hence a vocabulary); across base families it is off.
"""

from __future__ import annotations

from dataclasses import dataclass

# M1's weights tried when --interpolate is not given: the three evenly spaced points strictly between
# the stacks. Each is a candidate start; validation picks among them (and A2) by the selection rule,
# so the accuracy floor (A2's validation accuracy − the tolerance) decides how far towards the old
# stack a start may go. The ends are left out: α = 0 is A2 (always a candidate anyway) and α = 1 a
# rollback (no flips by construction, none of the update). Not tuned on any eval split.
DEFAULT_ALPHAS = (0.25, 0.5, 0.75)
ENERGY_KEPT = 1 - 1e-6      # per layer: numerically exact for a low-rank update, a cap for a full-rank one
DEFAULT_MAX_RANK = 64       # per layer; a full-rank update is truncated here (the captured share says how much)


@dataclass
class Interpolation:
    """What the interpolated start reproduces of θ_α (stored in muscle_training.json)."""

    alpha: float
    modules: int            # linear layers the student adapts
    max_rank: int           # the largest rank one of them got
    captured: float         # share of ‖θ_α − θ_v2‖² the LoRA reproduces (1.0: exact)
    uncaptured: list[str]   # non-linear parameters that differ between the stacks (LoRA cannot carry them)


def linear_weights(model) -> dict:
    """name → weight of every linear layer as the forward pass sees it (LoRA deltas added), for a
    plain transformers model or a PEFT stack. Read per module, so a tied lm_head is there too."""
    import torch
    from peft.tuners.lora import LoraLayer

    inner = model.base_model.model if hasattr(model, "peft_config") else model
    weights = {}
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Linear):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter)
            weights[name] = weight
        elif isinstance(module, torch.nn.Linear) and not _inside_lora_layer(name):
            weights[name] = module.weight.detach()
    return weights


def _inside_lora_layer(name: str) -> bool:
    return any(part == "base_layer" or part.startswith("lora_") for part in name.split("."))


def other_parameters(model, linear: dict) -> dict:
    """The parameters outside linear layers' weights (embeddings, norms, biases), PEFT's names undone."""
    inner = model.base_model.model if hasattr(model, "peft_config") else model
    others = {}
    for name, p in inner.named_parameters():
        if _inside_lora_layer(name.rsplit(".", 1)[0]) and ".base_layer." not in name:
            continue   # LoRA's own A/B matrices
        name = name.replace(".base_layer.", ".")
        if name.endswith(".weight") and name[: -len(".weight")] in linear:
            continue
        others[name] = p.detach()
    return others


def same_architecture(old_model, new_model) -> str | None:
    """None when the two models have the same layers and parameter shapes, else what differs."""
    old_linear, new_linear = linear_weights(old_model), linear_weights(new_model)
    old = {n: tuple(w.shape) for n, w in {**old_linear, **other_parameters(old_model, old_linear)}.items()}
    new = {n: tuple(w.shape) for n, w in {**new_linear, **other_parameters(new_model, new_linear)}.items()}
    return shape_difference(old, new)


def shape_difference(old: dict, new: dict) -> str | None:
    """The first parameter (by name) whose shape differs between two name → shape maps, as a
    message; None when they are equal."""
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            return f"{name}: {old.get(name, 'absent')} (old) vs {new.get(name, 'absent')} (new)"
    return None


class ArchitectureMismatch(ValueError):
    """The two stacks do not share layers and parameter shapes; the message says what differs."""


def load_interpolated_starts(base, old: tuple, new: tuple, alphas, adapter_name: str, **load_options):
    """:class:`InterpolatedStarts` with the stacks loaded here, each an (adapter, base) pair passed to
    ``load_stack`` with ``load_options``, and freed before returning. The old stack is checked
    against ``base`` before the new one loads (:class:`ArchitectureMismatch`)."""
    import gc

    from pytest_modelcompat import load_stack

    old_model = load_stack(*old, **load_options).model
    differs = same_architecture(old_model, base)
    if differs is not None:
        raise ArchitectureMismatch(differs)
    new_model = load_stack(*new, **load_options).model
    starts = InterpolatedStarts(base, old_model, new_model, alphas, adapter_name)
    del old_model, new_model
    gc.collect()
    return starts


def _low_rank(delta, max_rank: int):
    """(B [out, r], A [r, in], kept share of ‖delta‖²) with B @ A the best rank-r approximation."""
    import torch

    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    energy = (s * s).cumsum(0)
    total = float(energy[-1])
    rank = min(max_rank, int((energy < ENERGY_KEPT * total).sum()) + 1)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(delta.dtype), (root[:, None] * vh[:rank]).to(delta.dtype), float(energy[rank - 1]) / total


class InterpolatedStarts:
    """``base`` (the new base, a plain transformers model) with one trainable LoRA ``adapter_name`` that
    can be set to θ_α for each α of ``alphas`` (and to A2 itself, α = 0), between ``old_stack`` (M1)
    and ``new_stack`` (M2), both PEFT stacks or plain models.

    Every θ_α is factorised once (an SVD per layer and α); a layer's LoRA rank is the largest any α
    needs, smaller factors are zero-padded (the product is unchanged), so :meth:`use` switches α in
    place and a start chosen on validation is the adapter that trains on.
    """

    def __init__(self, base, old_stack, new_stack, alphas, adapter_name: str, *, max_rank: int = DEFAULT_MAX_RANK):
        import torch
        from peft import LoraConfig, get_peft_model

        self.alphas, self.adapter_name = tuple(alphas), adapter_name
        base_linear, old_linear, new_linear = linear_weights(base), linear_weights(old_stack), linear_weights(new_stack)
        old_others, new_others = other_parameters(old_stack, old_linear), other_parameters(new_stack, new_linear)
        base_others = other_parameters(base, base_linear)
        self._factors: dict[float, dict[str, tuple]] = {}
        self._reports: dict[float, Interpolation] = {}
        with torch.no_grad():
            for alpha in sorted({0.0, *self.alphas}):
                factors, total, residual = {}, 0.0, 0.0
                for name, weight in base_linear.items():
                    delta = alpha * old_linear[name] + (1 - alpha) * new_linear[name] - weight
                    norm2 = float(delta.double().pow(2).sum())
                    if norm2 == 0.0:
                        continue
                    b, a, kept = _low_rank(delta, max_rank)
                    factors[name] = (b, a)
                    total += norm2
                    residual += norm2 * (1 - kept)
                uncaptured = []
                for name, p in base_others.items():
                    norm2 = float((alpha * old_others[name] + (1 - alpha) * new_others[name] - p).double().pow(2).sum())
                    if norm2 > 0.0:
                        uncaptured.append(name)
                        total += norm2
                        residual += norm2
                if alpha in self.alphas and not factors:
                    raise ValueError("the two stacks have identical linear weights: there is nothing to interpolate")
                self._factors[alpha] = factors
                self._reports[alpha] = Interpolation(
                    alpha=alpha, modules=len(factors), max_rank=max((b.shape[1] for b, _ in factors.values()), default=0),
                    captured=1.0 - residual / total if total else 1.0, uncaptured=uncaptured)
        ranks: dict[str, int] = {}
        for factors in self._factors.values():
            for name, (b, _) in factors.items():
                ranks[name] = max(ranks.get(name, 0), b.shape[1])
        top = max(ranks.values())
        # One rank per layer (rank_pattern) and alpha = rank, so PEFT's scale alpha / r is 1 everywhere.
        lora = LoraConfig(r=top, lora_alpha=top, target_modules=sorted(ranks), lora_dropout=0.0,
                          rank_pattern=ranks, alpha_pattern=ranks, task_type="CAUSAL_LM")
        self.model = get_peft_model(base, lora, adapter_name=adapter_name)

    def report(self, alpha: float) -> Interpolation:
        """What the LoRA reproduces of θ_α."""
        return self._reports[alpha]

    def use(self, alpha: float) -> Interpolation:
        """Set the student's LoRA to θ_α (α = 0: A2); what it reproduces of θ_α."""
        import torch

        factors = self._factors[alpha]
        with torch.no_grad():
            for name in self.model.peft_config[self.adapter_name].rank_pattern:
                layer = self.model.base_model.model.get_submodule(name)
                b_weight, a_weight = layer.lora_B[self.adapter_name].weight, layer.lora_A[self.adapter_name].weight
                b_weight.zero_()
                a_weight.zero_()
                if name in factors:
                    b, a = factors[name]
                    b_weight[:, : b.shape[1]].copy_(b)
                    a_weight[: a.shape[0]].copy_(a)
        return self._reports[alpha]


def interpolated_student(base, old_stack, new_stack, alpha: float, adapter_name: str, *,
                         max_rank: int = DEFAULT_MAX_RANK):
    """``base`` with a trainable LoRA ``adapter_name`` set to θ_α (:class:`InterpolatedStarts` for one
    α); returns (PEFT model, :class:`Interpolation`)."""
    starts = InterpolatedStarts(base, old_stack, new_stack, (alpha,), adapter_name, max_rank=max_rank)
    return starts.model, starts.use(alpha)
