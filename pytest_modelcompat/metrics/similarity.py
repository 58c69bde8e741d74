"""Similarity functions S(prediction, reference) in [0, 1] for generative tasks.

`rouge1` (ROUGE-1 F1 from Google's rouge-score, Porter stemming on, as in the usual SAMSum /
summarisation setups) is the default. Plug in your own either by name with
`register_similarity(name, fn)` or from a suite file as ``metric: package.module:function``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache

from pytest_modelcompat.errors import CompatInputError

Similarity = Callable[[str, str], float]

_REGISTRY: dict[str, Similarity] = {}


def _rouge(kind: str) -> Similarity:
    def score(prediction: str, reference: str) -> float:
        return _rouge_scorer(kind).score(reference, prediction)[kind].fmeasure

    score.__name__ = kind
    return score


@cache
def _rouge_scorer(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


for _kind in ("rouge1", "rouge2", "rougeL"):
    _REGISTRY[_kind] = _rouge(_kind)


def register_similarity(name: str, fn: Similarity) -> None:
    """Make ``fn`` available to suites as ``metric: <name>``."""
    _REGISTRY[name] = fn


def similarity(name: str) -> Similarity:
    """Resolve a suite's ``metric:`` to a function (a registered name or ``module:function``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise CompatInputError(
                f"similarity metric {name!r} cannot be imported ({exc}); "
                "use `module:function` of an importable module"
            ) from None
        if not callable(fn):
            raise CompatInputError(f"similarity metric {name!r} is not callable")
        return fn
    raise CompatInputError(
        f"unknown similarity metric {name!r}; use one of {sorted(_REGISTRY)} or `module:function`"
    )
