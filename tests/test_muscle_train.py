"""End to end on tiny real models: `muscle finetune` makes A1/A2 that disagree, `muscle train` cuts
validation NFR vs M1; resume equivalence; precomputed teachers; a 2-process accelerate run; CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from muscle import cli, trainer
from muscle.data import split_train_val

WORDS = "cat dog jar movie Anna Bob lunch noon spoon mat".split()   # one token each (with a space)
FILLERS = "the on sat ate hi sure at two".split()
YES = {"cat", "jar", "Anna", "lunch", "spoon"}
SUITE = """tasks:
  - name: pick
    kind: multiple_choice
    data: val.jsonl
    train: {train}
    text: "Item {{{{filler}}}} {{{{word}}}}"
    choices: ["yes", "no"]
    label: "{{{{label}}}}"
  - name: raw
    kind: generative
    data: text.jsonl
    train: text.jsonl
    text: ""
    target: "{{{{text}}}}"
    delimiter: ""
  - name: say
    kind: exact_match
    data: val.jsonl
    train: {train}
    text: "Item {{{{filler}}}} {{{{word}}}}"
    target: "{{{{ ['yes', 'no'][label] }}}}"
    extract: "(yes|no)"
    max_new_tokens: 1
"""
# Learnable by a tiny random Llama: the word is the last prompt token, so a LoRA on lm_head can read
# it off; A1's training data has the labels of {jar, movie} flipped, A2's those of {cat, dog}, so
# each stack gets a different pair of words wrong and their errors disagree.
LORA = ["--target-modules", "q_proj,v_proj,lm_head", "--lr", "2e-2", "--batch-size", "8", "--device", "cpu"]


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    rows = [{"word": w, "filler": f, "label": 0 if w in YES else 1} for f in FILLERS for w in WORDS]
    for name, flipped in (("train", set()), ("train_v1", {"jar", "movie"}), ("train_v2", {"cat", "dog"})):
        _write_rows(d / f"{name}.jsonl", [dict(r, label=1 - r["label"]) if r["word"] in flipped else r for r in rows])
        (d / f"suite_{name}.yaml").write_text(SUITE.format(train=f"{name}.jsonl"))
    # Training part labelled like A2 (cat/dog flipped), validation part true: cross-entropy learns A2's
    # errors there, while M1 (which gets cat/dog right) still knows better.
    train_part, _ = split_train_val(list(range(len(rows))), seed=0)
    noisy = [dict(r, label=1 - r["label"]) if i in set(train_part) and r["word"] in {"cat", "dog"} else r
             for i, r in enumerate(rows)]
    _write_rows(d / "train_noisy.jsonl", noisy)
    (d / "suite_train_noisy.yaml").write_text(SUITE.format(train="train_noisy.jsonl"))
    _write_rows(d / "val.jsonl", rows[:20])
    _write_rows(d / "text.jsonl", [{"text": f"The {r['word']} {r['filler']} the mat."} for r in rows])
    return d


@pytest.fixture(scope="module")
def adapters(task_dir, tiny_base, tiny_base_v2, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    for name, base, epochs in (("a1", tiny_base, "10"), ("a2", tiny_base_v2, "6")):
        suite = task_dir / f"suite_train_v{name[1]}.yaml"
        assert cli.main(["finetune", "--suite", str(suite), "--task", "pick", "--base", str(base),
                         "--output", str(out / name), "--epochs", epochs, *LORA]) == 0
    return out / "a1", out / "a2"


def _record(path):
    return json.loads((path / trainer.TRAINING_JSON).read_text())


def _adapter_tensors(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


# The epochs that made A1: enough for a tiny random model to converge. At half A1's learning rate:
# `say`'s targets end with EOS, which the multiple-choice adapters never produced, and at A1's
# 2e-2 the student first collapsed to one answer for every word before it learned both tokens.
EPOCHS = "10"
LR = "1e-2"


def _train(task_dir, adapters, out, data, task, *extra, epochs=EPOCHS):
    a1, a2 = adapters
    argv = ["train", "--suite", str(task_dir / f"suite_{data}.yaml"), "--task", task, "--old-adapter", str(a1),
            "--new-adapter", str(a2), "--output", str(out), "--epochs", epochs, "--lr", LR, "--batch-size", "8",
            "--device", "cpu", "--no-cache", "--interpolate", "0", *extra]   # objectives from A2's start
    assert cli.main(argv) == 0
    return _record(out)


def _nfr(record, epoch=int(EPOCHS)):
    """Validation NFR at a fixed epoch (never the selected one: selection would make the test circular)."""
    return next(h for h in record["epochs"] if h["epoch"] == epoch)["val"]["nfr"]


# task → its default compatibility objective
OBJECTIVE = {"pick": "choice", "say": "sequence"}


@pytest.mark.parametrize("task", ["pick", "say"])
def test_objective_moves_validation_nfr_where_cross_entropy_does_not(task_dir, adapters, tmp_path, task):
    # Training rows labelled as A2 answers: cross-entropy from A2 has nothing to learn from them, so
    # its negative flips (words A1 gets right, A2 wrong) stay; imitating M1 (mask none) removes them.
    objective = ["--objective", OBJECTIVE[task]]
    ce = _train(task_dir, adapters, tmp_path / "ce", "train_noisy", task, *objective, "--ce-weight", "1")
    start = _nfr(ce, 0)
    assert start >= 0.1                                    # the stacks really disagree
    assert _nfr(ce) >= start - 0.05
    compat = _train(task_dir, adapters, tmp_path / "compat", "train_noisy", task, *objective, "--mask", "none")
    assert _nfr(compat, 0) == start
    assert _nfr(compat) <= start / 2
    assert compat["epochs"][-1]["val"]["acc"] > compat["epochs"][0]["val"]["acc"]
    assert compat["teachers"] == "predictions" and compat["config"]["objective"] == OBJECTIVE[task]


def _inverted_mask(monkeypatch):
    from muscle.losses import choice, sequence

    original_instance, original_pick = choice.instance_mask, sequence.pick_targets
    monkeypatch.setattr(choice, "instance_mask", lambda *args: 1 - original_instance(*args))
    monkeypatch.setattr(sequence, "pick_targets", lambda *args: [not m for m in original_pick(*args)])


def _swapped_teachers(monkeypatch):
    from muscle import objectives

    for cls in (objectives.ChoiceObjective, objectives.SequenceObjective):
        def swapped_init(self, *args, _init=cls.__init__, **kwargs):
            _init(self, *args, **kwargs)
            self.old, self.new = self.new, self.old

        monkeypatch.setattr(cls, "__init__", swapped_init)


@pytest.mark.parametrize("task", ["pick", "say"])
@pytest.mark.parametrize("break_it", [_inverted_mask, _swapped_teachers], ids=["inverted-mask", "swapped-teachers"])
def test_the_same_run_with_a_broken_mask_or_teachers_does_not_move_nfr(task_dir, adapters, tmp_path, monkeypatch,
                                                                      task, break_it):
    # The run above, with the mask inverted (M2 wherever it said M1) or the teachers swapped: the
    # student imitates A2, its own starting point, and A2's negative flips stay.
    break_it(monkeypatch)
    record = _train(task_dir, adapters, tmp_path / "compat", "train_noisy", task, "--objective", OBJECTIVE[task],
                    "--mask", "none")
    last = record["epochs"][-1]["epoch"]   # the choice objective may find nothing to teach and not train
    assert _nfr(record, last) > _nfr(record, 0) / 2


def test_token_objective_cuts_validation_nfr(task_dir, adapters, tmp_path):
    # The paper's loss and mask on true labels.
    record = _train(task_dir, adapters, tmp_path / "token", "train", "pick", "--objective", "token", epochs="6")
    assert record["teachers"] == "resident"
    assert {"loss", "kl", "ce", "mask_old"} <= set(record["epochs"][1]["train"])
    assert _nfr(record, 6) < _nfr(record, 0)


def test_output_is_a_peft_adapter_for_the_new_base(task_dir, adapters, tiny_base_v2, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "compat"
    record = _train(task_dir, adapters, out, "train", "pick", epochs="1")
    assert record["chosen_epoch"] in (0, 1)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_v2), out)
    assert not trainer.work_dir(out).exists()


def test_validation_decides_the_choice_defaults(task_dir, adapters, tiny_base, tmp_path, capsys):
    # No loss option given: A2's validation accuracy against A1's decides (trainer.defaults_after_validation).
    from tests import tiny

    _, a2 = adapters
    weak_a1 = tiny.build_adapter(tmp_path / "weak_a1", tiny_base, seed=11)   # a random LoRA: far below A2

    def run(out, *extra):
        argv = ["train", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--old-adapter",
                str(weak_a1), "--new-adapter", str(a2), "--output", str(out), "--batch-size", "8", "--device", "cpu",
                "--no-cache", "--val-rows", "48", *extra]
        assert cli.main(argv) == 0
        return _record(out)

    # 48 of the 80 rows validate: enough that A2's lead is beyond two standard errors of the gap.
    better = run(tmp_path / "better")
    assert better["val_acc"]["new"] - better["val_acc"]["old"] > 2 * better["val_gap_se"] > 0
    assert better["new_beats_old"]
    assert "A2 beats A1 by more than" in (out := capsys.readouterr().out) and "so 2 epochs of cross-entropy" in out
    config = better["config"]
    assert {k: config[k] for k in trainer.NEW_BEATS_OLD_DEFAULTS} == trainer.NEW_BEATS_OLD_DEFAULTS
    assert better["start"] == "A2" and [h["epoch"] for h in better["epochs"]] == [0, 1, 2]
    # The same stacks with a tolerance no accuracy gap exceeds: the untrained start grid.
    level = run(tmp_path / "level", "--acc-tolerance", "1")
    assert not level["new_beats_old"] and level["config"]["epochs"] == 0
    assert "A2 not above A1 by more than 100.0 pt (--acc-tolerance" in (out := capsys.readouterr().out)
    assert "so the interpolated starts untrained" in out
    assert {k: level["config"][k] for k in trainer.DEFAULTS} == trainer.DEFAULTS
    assert [t["alpha"] for t in level["epochs"][0]["starts"]] == [0.25, 0.5, 0.75]


def test_validation_avoids_the_rows_the_new_adapter_was_trained_on(task_dir, adapters, tiny_base_v2, tmp_path, capsys):
    # A2 finetuned on this very train file (another seed, so its rows are not the plain split's):
    # its record names them, and `muscle train` validates on the others. A1's record is of other data.
    a1, _ = adapters
    suite = str(task_dir / "suite_train.yaml")
    a2 = tmp_path / "a2"
    assert cli.main(["finetune", "--suite", suite, "--task", "pick", "--base", str(tiny_base_v2), "--output", str(a2),
                     "--epochs", "1", "--seed", "1", *LORA]) == 0
    a2_rows = set(_record(a2)["task"]["trained_on"])
    assert len(a2_rows) == _record(a2)["task"]["n_train"] == 64

    def run(out, *extra):
        assert cli.main(["train", "--suite", suite, "--task", "pick", "--old-adapter", str(a1), "--new-adapter", str(a2),
                         "--output", str(out), "--epochs", "1", "--interpolate", "0", "--batch-size", "8",
                         "--device", "cpu", "--no-cache", *extra]) == 0
        return _record(out)["task"]

    task = run(tmp_path / "c")
    assert task["n_val"] == 16 and task["val_rows_adapters_trained_on"] == 0
    assert a2_rows <= set(task["trained_on"])         # the output's weights came from A2
    assert "validation:" not in capsys.readouterr().out
    # more validation rows than A2 left out: the rest are its rows, and one line says so
    task = run(tmp_path / "d", "--val-rows", "30")
    assert task["val_rows_adapters_trained_on"] == 14
    assert "validation: 14 of 30 rows are rows the adapters were trained on" in capsys.readouterr().out


def test_precomputed_full_vocab_teachers_match_resident(task_dir, adapters, tmp_path):
    a1, a2 = adapters
    runs = {}
    for name, extra in (("resident", []), ("precomputed", ["--precompute-teachers", "--top-k", "100000"])):
        args = ["train", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--old-adapter", str(a1),
                "--new-adapter", str(a2), "--output", str(tmp_path / name), "--epochs", "1", "--lr", "1e-2",
                "--batch-size", "8", "--device", "cpu", "--objective", "token", "--mask", "ll-seq", *extra]
        assert cli.main(args) == 0
        runs[name] = _record(tmp_path / name)
    assert runs["precomputed"]["teachers"] == "precomputed"
    for key in ("loss", "mask_old"):
        assert runs["precomputed"]["epochs"][1]["train"][key] == pytest.approx(runs["resident"]["epochs"][1]["train"][key], rel=1e-4)


def test_precomputed_teachers_with_mask_none_store_m1_only(task_dir, adapters, tmp_path, monkeypatch):
    # --mask none gives M2 weight 0 everywhere: precomputing its logits would be wasted teacher passes.
    from muscle import teachers

    stored, original = [], teachers.precompute
    monkeypatch.setattr(teachers, "precompute",
                        lambda *args, **kwargs: stored.append(kwargs["adapter"]) or original(*args, **kwargs))
    record = _train(task_dir, adapters, tmp_path / "out", "train", "pick", "--objective", "token",
                    "--precompute-teachers", "--mask", "none", epochs="1")
    assert stored == [None]                      # M1 only (None: no adapter switch on the teacher)
    assert record["teachers"] == "precomputed" and record["epochs"][1]["train"]["mask_old"] == 1.0


def test_resume_after_interrupt_equals_straight_run(task_dir, tiny_base, tmp_path, monkeypatch):
    def args(out, *extra):
        return ["finetune", "--suite", str(task_dir / "suite_train.yaml"), "--task", "raw", "--base", str(tiny_base),
                "--output", str(out), "--epochs", "2", "--seed", "3", *LORA, *extra]

    assert cli.main(args(tmp_path / "straight")) == 0
    save = trainer._save_checkpoint

    def save_then_die(accelerator, path, broadcast):
        save(accelerator, path, broadcast)
        raise KeyboardInterrupt  # killed right after the epoch-1 checkpoint

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args(tmp_path / "resumed"))
    assert not (tmp_path / "resumed").exists()           # OUT is only written at the end
    assert (trainer.work_dir(tmp_path / "resumed") / "epoch-1").is_dir()
    monkeypatch.setattr(trainer, "_save_checkpoint", save)
    assert cli.main(args(tmp_path / "resumed", "--resume")) == 0

    straight, resumed = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert resumed[name].equal(tensor), name
    assert _record(tmp_path / "straight")["epochs"] == _record(tmp_path / "resumed")["epochs"]


def test_two_process_accelerate_run(task_dir, tiny_base, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # accelerate 1.x: `--cpu` alone runs one process; `--multi_gpu` starts torchrun workers. With the
    # default `--device auto` on a machine without a GPU (Accelerator(cpu=False)) they form a gloo
    # MULTI_CPU group, as `--device cpu` (Accelerator(cpu=True)) does.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "muscle.cli", "finetune", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick",
           "--base", str(tiny_base), "--output", str(out), "--epochs", "1", *LORA]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = _record(out)
    assert record["num_processes"] == 2
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "nope"], "task 'nope' is not in"),
    (["--task", "pick", "--mask", "paper", "--old-adapter", "/does/not/exist"], "does not exist"),
    (["--task", "say", "--objective", "choice"], "use --objective token or sequence"),
    (["--task", "pick", "--objective", "sequence"], "use --objective token or choice"),
    (["--task", "say", "--objective", "sequence", "--mask", "ll-seq"], "use --mask paper, old-correct, none"),
    (["--task", "pick", "--ensemble-weight", "1.5"], "--ensemble-weight must be between 0 and 1"),
    (["--task", "pick", "--every-choice"], "--every-choice applies to --objective token"),
    (["--task", "pick", "--add-modules", "k_proj,not_a_layer"], "no linear layer named not_a_layer"),
    (["--task", "say", "--objective", "token", "--every-choice"], "--every-choice applies to --objective token"),
    (["--task", "nolabel"], "label"),
])
def test_bad_input_is_one_line_and_exit_2(task_dir, adapters, tmp_path, capsys, argv, message):
    a1, a2 = adapters
    (task_dir / "nolabel.jsonl").write_text('{"word": "cat", "filler": "the"}\n' * 4)
    (task_dir / "suite_bad.yaml").write_text(SUITE.format(train="train.jsonl") + """  - name: nolabel
    kind: multiple_choice
    data: val.jsonl
    train: nolabel.jsonl
    text: "Item {{word}}"
    choices: ["yes", "no"]
    label: "{{label}}"
""")
    base = ["train", "--suite", str(task_dir / "suite_bad.yaml"), "--old-adapter", str(a1), "--new-adapter",
            str(a2), "--output", str(tmp_path / "x"), "--device", "cpu", "--no-cache"]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not trainer.work_dir(tmp_path / "x").exists()


def test_resume_refuses_a_checkpoint_of_another_config(task_dir, adapters, tmp_path, monkeypatch, capsys):
    out = tmp_path / "compat"

    def save_then_die(accelerator, path, broadcast):
        save(accelerator, path, broadcast)
        raise KeyboardInterrupt

    save = trainer._save_checkpoint
    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(task_dir, adapters, out, "train", "pick", epochs="2")
    monkeypatch.setattr(trainer, "_save_checkpoint", save)
    work = trainer.work_dir(out)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    a1, a2 = adapters
    argv = ["train", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--old-adapter", str(a1),
            "--new-adapter", str(a2), "--output", str(out), "--epochs", "2", "--lr", "1e-3", "--batch-size", "8",
            "--device", "cpu", "--no-cache", "--interpolate", "0", "--resume"]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and "options lr" in err and err.count("\n") == 1
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before and not out.exists()
    # a checkpoint an older muscle wrote (its history lacks what selection reads): refused the same way
    run_json = work / trainer.RUN_JSON
    older = {k: v for k, v in json.loads(run_json.read_text()).items() if k != "format"}
    run_json.write_text(json.dumps(older))
    assert cli.main([*argv[:argv.index("--lr") + 1], LR, *argv[argv.index("--lr") + 2:]]) == 2   # the same options
    err = capsys.readouterr().err
    assert err == f"error: --resume: the checkpoint in {work} was written by another version of muscle; " \
                  "rerun without --resume to start over\n"


def test_vocabulary_mismatch_is_refused(task_dir, adapters, tmp_path, capsys):
    from tests import tiny

    other_tok = tmp_path / "tok"
    tiny.build_tokenizer(other_tok)
    vocab = json.loads((other_tok / "tokenizer.json").read_text())
    vocab["added_tokens"].append({"id": len(vocab["model"]["vocab"]), "content": "<extra>", "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    (other_tok / "tokenizer.json").write_text(json.dumps(vocab))
    other_base = tiny.build_base(tmp_path / "base", other_tok, seed=5)
    a1, a2 = adapters
    code = cli.main(["train", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--old-adapter",
                     str(a1), "--old-base", str(other_base), "--new-adapter", str(a2), "--output",
                     str(tmp_path / "x"), "--device", "cpu", "--objective", "token"])
    assert code == 2
    err = capsys.readouterr().err
    assert "different tokenizer vocabularies" in err and "--objective choice" in err


def test_choice_objective_trains_across_different_tokenizers(task_dir, adapters, tiny_base_v2, tmp_path):
    from tests import tiny

    # An old stack whose tokenizer splits the text differently (its vocabulary lacks the merges
    # of the tiny corpus' words): only the teachers' predictions cross over, never token ids.
    other_tok = tmp_path / "tok"
    tiny.build_tokenizer(other_tok, vocab_size=300)
    other_base = tiny.build_base(tmp_path / "base", other_tok, seed=5)
    old = tiny.build_adapter(tmp_path / "a1_other", other_base, seed=7)
    _, a2 = adapters
    record = _train(task_dir, (old, a2), tmp_path / "compat", "train", "pick", "--objective", "choice", epochs="1")
    assert record["teachers"] == "predictions" and record["epochs"][0]["val"]["acc_old"] is not None
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(other_tok).get_vocab() != AutoTokenizer.from_pretrained(tiny_base_v2).get_vocab()


def test_output_is_quiet_no_third_party_bars_or_warnings(task_dir, tiny_base, tmp_path, capfd):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")   # would show the FutureWarning if it were not filtered
        code = cli.main(["finetune", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--base",
                         str(tiny_base), "--output", str(tmp_path / "a"), "--epochs", "1", *LORA])
    assert code == 0
    out, err = capfd.readouterr()
    for chatter in ("Loading weights", "Writing model shards", "FutureWarning", "it/s]"):
        assert chatter not in out + err, chatter


def test_saving_the_student_on_a_gguf_base_is_quiet(tiny_base, tmp_path, monkeypatch):
    # A GGUF base's recorded path is a file, not a dir with config.json: PEFT's resized-vocabulary
    # check would warn there (or, online, ask the Hub for that path).
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.peft_config[trainer.STUDENT].base_model_name_or_path = str(tmp_path / "base" / "model.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer._save_student(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_training_record_has_no_machine_paths(task_dir, tiny_base, tmp_path):
    # The record ships with the adapter: local paths relative to the suite's directory, no absolute ones.
    out = tmp_path / "a"
    assert cli.main(["finetune", "--suite", str(task_dir / "suite_train.yaml"), "--task", "pick", "--base",
                     str(tiny_base), "--output", str(out), "--epochs", "1", *LORA]) == 0
    config = _record(out)["config"]
    assert not [(k, v) for k, v in config.items() if isinstance(v, str) and os.path.isabs(v)]
    assert config["suite"] == "suite_train.yaml" and config["old_adapter"] is None
    for key, path in (("output", out), ("base", tiny_base)):
        assert os.path.samefile(task_dir / config[key], path), key
    assert str(tmp_path) not in (out / trainer.TRAINING_JSON).read_text()


def test_every_cli_option_has_help():
    parser = cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"muscle {name} {action.option_strings} has no help"


def test_add_modules_widens_the_student_which_starts_as_a2(task_dir, adapters, tmp_path):
    plain = _train(task_dir, adapters, tmp_path / "plain", "train", "pick", epochs="1")
    out = tmp_path / "wide"
    # --select loss keeps the trained epoch, so the output is the widened adapter (epoch 0 would copy A2)
    wide = _train(task_dir, adapters, out, "train", "pick", "--add-modules", "k_proj, o_proj", "--select", "loss",
                  epochs="1")
    wide_val, plain_val = wide["epochs"][0]["val"], plain["epochs"][0]["val"]
    assert wide_val.pop("flipped") == plain_val.pop("flipped")
    assert wide_val == pytest.approx(plain_val, rel=1e-6)
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "v_proj", "lm_head", "k_proj", "o_proj"}
    tensors = _adapter_tensors(out)
    added_b = [t for name, t in tensors.items() if "k_proj.lora_B" in name or "o_proj.lora_B" in name]
    assert added_b and all(t.abs().sum() > 0 for t in added_b)     # trained away from their zero start


def test_epoch_0_validation_from_cached_a2_predictions_equals_scoring_a2(task_dir, adapters, tmp_path):
    # choice reuses the teachers' A2 predictions for epoch 0; token scores the student (= A2) itself
    reused = _train(task_dir, adapters, tmp_path / "choice", "train", "pick", "--objective", "choice", epochs="1")
    scored = _train(task_dir, adapters, tmp_path / "token", "train", "pick", "--objective", "token", epochs="1")
    keys = ("acc", "acc_old", "nfr", "pfr", "nfr_mc")
    assert {k: reused["epochs"][0]["val"][k] for k in keys} == {k: scored["epochs"][0]["val"][k] for k in keys}
