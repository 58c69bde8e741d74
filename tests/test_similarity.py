from __future__ import annotations

import pytest

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.metrics.similarity import register_similarity, similarity


def test_rouge1_hand_computed():
    rouge1 = similarity("rouge1")
    # unigram overlap {the, cat} = 2 of 3 on both sides: P = R = F = 2/3
    assert rouge1("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    assert rouge1("", "the cat") == 0.0
    assert rouge1("Cats run.", "the cat runs") == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))  # stemmed


def test_pluggable_by_name_and_by_import_path():
    register_similarity("exact", lambda p, r: float(p == r))
    assert similarity("exact")("a", "a") == 1.0
    assert similarity("os.path:commonprefix") is __import__("os").path.commonprefix


@pytest.mark.parametrize("name", ["bleu9", "no_such_module_xyz:fn", "os.path:no_such_fn"])
def test_unknown_metric_is_an_input_error(name):
    with pytest.raises(CompatInputError):
        similarity(name)
