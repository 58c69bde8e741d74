"""The interpolated start (muscle/interpolation.py): θ_α as a LoRA on the new base, exact where the
update is low-rank, honest about what LoRA cannot carry; its place in `muscle train`."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muscle import cli, trainer
from muscle.interpolation import DEFAULT_ALPHAS, InterpolatedStarts, interpolated_student, linear_weights
from pytest_modelcompat import CompatInputError, load_stack

SUITE = """tasks:
  - name: pick
    kind: multiple_choice
    data: rows.jsonl
    train: rows.jsonl
    text: "Item {{word}}"
    choices: ["yes", "no"]
    label: "{{label}}"
"""
WORDS = "cat dog jar movie Anna Bob lunch noon spoon mat".split()


@pytest.fixture(scope="module")
def low_rank_update(tmp_path_factory, tiny_base):
    """Base v2 = v1 with a rank-2 change to every linear layer (embeddings and norms untouched), as a
    base update trained with LoRA and merged; and A2 on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests import tiny

    out = tmp_path_factory.mktemp("base_v2_low_rank")
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                rows, cols = module.weight.shape
                module.weight += 0.3 * torch.randn(rows, 2, generator=generator) @ torch.randn(2, cols, generator=generator) / cols ** 0.5
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(out)
    return out, tiny.build_adapter(tmp_path_factory.mktemp("a2_low_rank"), out, seed=12)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _start(tiny_adapter, tiny_base, a2, base_v2, alpha):
    from pytest_modelcompat import load_base

    old, new = load_stack(tiny_adapter, tiny_base, device="cpu"), load_stack(a2, base_v2, device="cpu")
    base = load_base(base_v2, device="cpu")[0]
    student, report = interpolated_student(base, old.model, new.model, alpha, "student")
    return student, report, old.model, new.model


@pytest.mark.parametrize("alpha, which", [(1.0, "old"), (0.0, "new")])
def test_the_ends_of_the_interpolation_are_the_two_stacks(tiny_adapter, tiny_base, low_rank_update, alpha, which):
    base_v2, a2 = low_rank_update
    student, report, old, new = _start(tiny_adapter, tiny_base, a2, base_v2, alpha)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    assert torch.allclose(_logits(student, ids), _logits(old if which == "old" else new, ids), atol=1e-4)
    assert report.captured == pytest.approx(1.0) and report.uncaptured == []


def test_the_midpoint_has_the_mean_of_every_linear_weight(tiny_adapter, tiny_base, low_rank_update):
    base_v2, a2 = low_rank_update
    student, report, old, new = _start(tiny_adapter, tiny_base, a2, base_v2, 0.5)
    student_w, old_w, new_w = linear_weights(student), linear_weights(old), linear_weights(new)
    assert set(student_w) == set(old_w) == set(new_w)
    for name, weight in student_w.items():
        assert torch.allclose(weight, (old_w[name] + new_w[name]) / 2, atol=1e-5), name
    # The update moved every linear layer; A1/A2 add their q_proj/v_proj deltas. Rank: 2 (base update)
    # + 4 (A1) + 4 (A2) at most, so the SVD keeps it exactly.
    assert report.modules == len(old_w) and report.max_rank <= 10
    assert not any(p.requires_grad for n, p in student.named_parameters() if "lora_" not in n)
    assert all(p.requires_grad for n, p in student.named_parameters() if "lora_" in n)


def test_what_lora_cannot_carry_is_reported(tiny_adapter, tiny_base, tiny_base_v2, tiny_adapter_v2):
    # Two random bases: the embeddings differ too, and a LoRA on linear layers cannot move them.
    _, report, _, _ = _start(tiny_adapter, tiny_base, tiny_adapter_v2, tiny_base_v2, 0.5)
    assert "model.embed_tokens.weight" in report.uncaptured
    assert 0.0 < report.captured < 1.0


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("suite")
    (d / "rows.jsonl").write_text("".join(json.dumps({"word": w, "label": i % 2}) + "\n"
                                          for i, w in enumerate(WORDS * 3)))
    (d / "suite.yaml").write_text(SUITE)
    return d / "suite.yaml"


def _train(suite, old, new, out, *extra):
    (a1, b1), (a2, b2) = old, new
    return cli.main(["train", "--suite", str(suite), "--task", "pick", "--old-adapter", str(a1), "--old-base", str(b1),
                     "--new-adapter", str(a2), "--new-base", str(b2), "--output", str(out), "--epochs", "1",
                     "--device", "cpu", "--no-cache", *extra])


def test_one_student_switches_between_the_starts_in_place(tiny_adapter, tiny_base, low_rank_update):
    from pytest_modelcompat import load_base

    base_v2, a2 = low_rank_update
    old, new = load_stack(tiny_adapter, tiny_base, device="cpu"), load_stack(a2, base_v2, device="cpu")
    starts = InterpolatedStarts(load_base(base_v2, device="cpu")[0], old.model, new.model, (0.25, 0.75), "student")
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    old_logits, new_logits = _logits(old.model, ids), _logits(new.model, ids)
    # α = 0 is A2 itself; switching back and forth lands on the same θ_α as a student built for it alone
    assert starts.use(0.0).alpha == 0.0
    assert torch.allclose(_logits(starts.model, ids), new_logits, atol=1e-4)
    starts.use(0.75)
    at_075 = _logits(starts.model, ids)
    starts.use(0.25)
    assert not torch.allclose(_logits(starts.model, ids), at_075, atol=1e-3)
    starts.use(0.75)
    assert torch.equal(_logits(starts.model, ids), at_075)
    alone, _, _, _ = _start(tiny_adapter, tiny_base, a2, base_v2, 0.75)
    assert torch.allclose(at_075, _logits(alone, ids), atol=1e-5)
    # θ_0.75 sits nearer M1 than M2 (the logits are linear in the weights only approximately)
    assert (at_075 - old_logits).norm() < (at_075 - new_logits).norm()


def test_train_validates_every_start_of_the_grid_and_keeps_the_rules_choice(suite, tiny_adapter, tiny_base,
                                                                           low_rank_update, tmp_path):
    base_v2, a2 = low_rank_update
    assert _train(suite, (tiny_adapter, tiny_base), (a2, base_v2), tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / trainer.TRAINING_JSON).read_text())
    epoch0 = record["epochs"][0]
    assert [t["alpha"] for t in epoch0["starts"]] == list(DEFAULT_ALPHAS)
    # A2 is a candidate beside the starts: its validation metrics are there, scored from its predictions.
    assert record["a2_val"]["acc"] is not None and record["kept"] in ("A2", "epoch 0", "epoch 1")
    expected = trainer.choose_candidate([(None, record["a2_val"])] + [(t["alpha"], t["val"]) for t in epoch0["starts"]],
                                        "multiple_choice", 0.005)
    assert epoch0["alpha"] == expected
    if expected is None:
        assert record["start"] == "A2"
    else:
        assert record["start"]["alpha"] == expected and record["start"]["captured"] == pytest.approx(1.0)
        assert epoch0["val"] == next(t["val"] for t in epoch0["starts"] if t["alpha"] == expected)


def test_an_explicit_alpha_is_the_only_start(suite, tiny_adapter, tiny_base, low_rank_update, tmp_path):
    base_v2, a2 = low_rank_update
    assert _train(suite, (tiny_adapter, tiny_base), (a2, base_v2), tmp_path / "out", "--interpolate", "0.5") == 0
    record = json.loads((tmp_path / "out" / trainer.TRAINING_JSON).read_text())
    assert [t["alpha"] for t in record["epochs"][0]["starts"]] == [0.5]
    assert record["epochs"][0]["val"] != record["a2_val"]


def _val(acc, flipped, n=1000):
    """Validation metrics of a candidate against M1: accuracy and the rows it flips (of n)."""
    return {"acc": acc, "nfr": len(flipped) / n, "n": n, "flipped": list(flipped)}


def test_start_selection_keeps_the_lowest_nfr_above_the_floor_and_prefers_the_new_side_on_ties():
    a2 = (None, _val(0.70, range(50)))
    # each start flips a subset of A2's rows; 0.75 flips least but falls below A2's accuracy − 0.5 pt
    starts = [(0.25, _val(0.70, range(40))), (0.5, _val(0.697, range(30))), (0.75, _val(0.69, range(10)))]
    assert trainer.choose_candidate([a2, *starts], "multiple_choice", 0.005) == 0.5
    # equal NFR and accuracy: the start nearer the new stack
    starts = [(0.25, _val(0.70, range(30))), (0.5, _val(0.70, range(20, 50)))]
    assert trainer.choose_candidate([a2, *starts], "multiple_choice", 0.005) == 0.25
    # none flips less than A2: A2; nor does an equal NFR at a higher accuracy replace it
    assert trainer.choose_candidate([a2, (0.5, _val(0.71, range(60)))], "multiple_choice", 0.005) is None
    assert trainer.choose_candidate([a2, (0.5, _val(0.71, range(50)))], "multiple_choice", 0.005) is None


def test_a_start_replaces_a2_only_beyond_validation_noise():
    # A2 flips 61 of 1,000 validation rows, the candidate 53 (Gemma's kept epoch, eval: more flips than A2).
    a2 = (None, _val(0.658, range(61)))
    # 53 of A2's 61: the difference is 8 rows of +1, SE √(0.008 − 0.008²) / √1000 = 0.28 pt, two of them
    # 0.56 pt < 0.8 pt: beyond noise.
    subset = _val(0.666, range(53))
    assert trainer.flip_gain_standard_error(a2[1], subset) == pytest.approx(math.sqrt((0.008 - 0.008**2) / 1000))
    assert trainer.choose_candidate([a2, (1, subset)], "multiple_choice", 0.005) == 1
    # 40 of A2's rows and 13 of its own: 21 rows of +1, 13 of −1, SE √(0.034 − 0.008²) / √1000 = 0.58 pt,
    # two of them 1.17 pt > 0.8 pt: within noise, A2 is kept.
    moved = _val(0.666, [*range(40), *range(1000 - 13, 1000)])
    assert trainer.flip_gain_standard_error(a2[1], moved) == pytest.approx(math.sqrt((0.034 - 0.008**2) / 1000))
    assert trainer.choose_candidate([a2, (1, moved)], "multiple_choice", 0.005) is None
    # the same flip counts on ten times the rows: beyond noise again
    big = (None, _val(0.658, range(610), n=10_000))
    moved = _val(0.666, [*range(400), *range(10_000 - 130, 10_000)], n=10_000)
    assert trainer.choose_candidate([big, (1, moved)], "multiple_choice", 0.005) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(20, 400), st.data())
def test_flip_gain_standard_error_is_the_per_row_differences(n, data):
    rows = st.lists(st.integers(0, n - 1), unique=True, max_size=n)
    a2, own = data.draw(rows), data.draw(rows)
    diffs = [(i in a2) - (i in own) for i in range(n)]
    expected = statistics.pstdev(diffs) / math.sqrt(n)
    assert trainer.flip_gain_standard_error(_val(0.5, a2, n), _val(0.5, own, n)) == pytest.approx(expected, abs=1e-12)


def test_interpolate_0_starts_from_a2(suite, tiny_adapter, tiny_base, low_rank_update, tmp_path):
    base_v2, a2 = low_rank_update
    assert _train(suite, (tiny_adapter, tiny_base), (a2, base_v2), tmp_path / "out", "--interpolate", "0") == 0
    record = json.loads((tmp_path / "out" / trainer.TRAINING_JSON).read_text())
    assert record["start"] == "A2" and record["a2_val"] is None


def test_across_architectures_the_default_starts_from_a2_and_an_explicit_alpha_is_refused(
        suite, low_rank_update, tmp_path, capsys):
    from tests import tiny

    base_v2, a2 = low_rank_update
    other_tok = tiny.build_tokenizer(tmp_path / "tok", vocab_size=300)
    other_base = tiny.build_base(tmp_path / "other", other_tok, seed=5, hidden=48)
    old = (tiny.build_adapter(tmp_path / "a1_other", other_base, seed=7), other_base)
    assert _train(suite, old, (a2, base_v2), tmp_path / "out", "--objective", "choice") == 0
    assert json.loads((tmp_path / "out" / trainer.TRAINING_JSON).read_text())["start"] == "A2"
    capsys.readouterr()
    assert _train(suite, old, (a2, base_v2), tmp_path / "refused", "--objective", "choice",
                  "--interpolate", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--interpolate needs old and new bases of one architecture" in err
    assert not (tmp_path / "refused").exists()


def test_across_architectures_the_default_distils_and_epochs_0_is_refused_before_any_model_loads(
        suite, tiny_adapter, tiny_base, low_rank_update, tmp_path, capsys):
    from tests import tiny

    base_v2, a2 = low_rank_update
    other_tok = tiny.build_tokenizer(tmp_path / "tok", vocab_size=300)
    other_base = tiny.build_base(tmp_path / "other", other_tok, seed=5, hidden=48)
    a1_other = tiny.build_adapter(tmp_path / "a1_other", other_base, seed=7)

    def preflight(old, **options):
        config = trainer.TrainConfig(mode="train", suite=str(suite), task="pick", output=str(tmp_path / "out"),
                                     old_adapter=str(old[0]), old_base=str(old[1]), new_adapter=str(a2),
                                     base=str(base_v2), **options)
        return trainer.preflight(config)[0]

    # one architecture: the grid of starts, untrained (unless A2 beats A1 on validation, which decides
    # the choice objective's epochs when no loss option is given); another family: no start but A2,
    # so it distils
    assert preflight((tiny_adapter, tiny_base), mask="old-correct").epochs == 0
    assert preflight((tiny_adapter, tiny_base)).epochs is None
    across = preflight((a1_other, other_base))
    assert across.interpolate == 0.0 and across.epochs is None
    assert preflight((a1_other, other_base), mask="old-correct").epochs == trainer.DEFAULT_EPOCHS["finetune"]
    # across families validation still decides: distil (finetune's epochs), or the labels' recipe
    level, better = ({"acc": 0.6, "acc_old": 0.6 - lead, "nfr": 0.05, "pfr": 0.05 + lead} for lead in (0.0, 0.1))
    assert trainer.defaults_after_validation(across, level, 400)[0].epochs == trainer.DEFAULT_EPOCHS["finetune"]
    assert trainer.defaults_after_validation(across, better, 400)[0].epochs == trainer.NEW_BEATS_OLD_DEFAULTS["epochs"]
    with pytest.raises(CompatInputError, match="differ in architecture .*pass --epochs N to distil"):
        preflight((a1_other, other_base), epochs=0)
    assert _train(suite, (a1_other, other_base), (a2, base_v2), tmp_path / "refused", "--epochs", "0") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()


def test_add_modules_with_an_interpolated_start_is_refused(suite, tiny_adapter, tiny_base, low_rank_update,
                                                           tmp_path, capsys):
    base_v2, a2 = low_rank_update
    assert _train(suite, (tiny_adapter, tiny_base), (a2, base_v2), tmp_path / "out", "--interpolate", "0.5",
                  "--add-modules", "k_proj") == 2
    assert "pass one of them" in capsys.readouterr().err


def test_selection_with_an_interpolated_start_keeps_a2_as_a_candidate():
    a2 = _val(0.70, range(50))
    history = [{"epoch": 0, "val": _val(0.70, range(20))}, {"epoch": 1, "val": _val(0.71, range(30))}]
    assert trainer.choose_epoch(history, "nfr", "multiple_choice", baseline=a2) == 0
    # the start drops accuracy beyond the tolerance: A2's accuracy is the floor, not the start's
    history[0]["val"] = _val(0.68, range(10))
    assert trainer.choose_epoch(history, "nfr", "multiple_choice", baseline=a2) == 1
    history[1]["val"] = _val(0.69, range(10))
    assert trainer.choose_epoch(history, "nfr", "multiple_choice", baseline=a2) is None
    # nothing flips less than A2: A2 itself (None), ahead of an equal epoch
    history = [{"epoch": 0, "val": _val(0.70, range(60))}, {"epoch": 1, "val": _val(0.70, range(50))}]
    assert trainer.choose_epoch(history, "nfr", "multiple_choice", baseline=a2) is None
    assert trainer.within_noise_line(history, a2, "multiple_choice", 0.005) is None
    # an epoch flips less, inside the noise: A2, and the console line says why
    history[1]["val"] = _val(0.70, [*range(40), *range(990, 1000)][:45])
    assert trainer.choose_epoch(history, "nfr", "multiple_choice", baseline=a2) is None
    line = trainer.within_noise_line(history, a2, "multiple_choice", 0.005)
    assert line.startswith("kept A2: epoch 1's validation nfr 0.0450 against A2's 0.0500 on 1000 rows is within noise")


def test_epochs_0_keeps_the_start_or_a2_untrained(suite, tiny_adapter, tiny_base, low_rank_update, tmp_path, capsys):
    base_v2, a2 = low_rank_update
    stacks = (tiny_adapter, tiny_base), (a2, base_v2)
    assert _train(suite, *stacks, tmp_path / "out", "--epochs", "0") == 0
    record = json.loads((tmp_path / "out" / trainer.TRAINING_JSON).read_text())
    assert [e["epoch"] for e in record["epochs"]] == [0] and record["kept"] in ("A2", "epoch 0")
    # from A2 there is nothing to keep but A2: refused, like finetune with no epochs
    assert _train(suite, *stacks, tmp_path / "refused", "--epochs", "0", "--interpolate", "0") == 2
    assert "--epochs must be a positive integer (0 only for `muscle train`" in capsys.readouterr().err
