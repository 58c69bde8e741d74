"""The training recipe for `muscle finetune` (cross-entropy) and `muscle train` (compatibility).

Read it top to bottom, as torchtune's recipes: :func:`train` is the whole run,

    recipe.setup()                        preflight, data, student, teachers, optimizer, checkpoints
    epoch 0: recipe.validate_start()      the student before training: the start chosen on validation
    per epoch: recipe.train_epoch(e) → recipe.validate(e) → recipe.checkpoint(e)
    recipe.save()                         the selected epoch's adapter + muscle_training.json, atomically

- finetune: base + fresh LoRA, CE on the gold continuation tokens.
- train: student = new base + a trainable LoRA that starts at θ_α, the two stacks' weights
  interpolated (muscle/interpolation.py), α chosen on validation among DEFAULT_ALPHAS by the selection
  rule, or at A2 itself (MUSCLE's start: --interpolate 0, another base family, no θ_α beats A2 on
  validation, or — multiple choice, no loss option given — A2 clearly beats A1 on validation, where the
  default learns from the gold labels instead: :func:`defaults_after_validation`). What it learns from is the
  objective (muscle/objectives.py): ``token`` (teachers' logits: M1 resident on its own base or
  precomputed to disk, M2 as a second frozen adapter on the student's base), ``choice`` and
  ``sequence`` (the gate's cached predictions of M1 and M2 on the train split; no teacher resident).

Validation (the seeded 20 % of the train file) scores the student with the gate's own code
(``pytest_modelcompat.predict``); for train, the epoch kept minimises validation NFR against M1 (smooth NFR
for generative tasks) among the epochs whose accuracy (score) is at least A2's minus
``acc_tolerance``. A2 itself is a candidate (epoch 0, or beside an interpolated epoch 0), so training
never returns something worse on validation than A2. Checkpoints (adapter, optimizer, scheduler, sampler, RNG, history) go to
``.<OUT>.work/epoch-N``; ``--resume`` continues from the latest one exactly, and refuses one made
with another config or other data (``run.json`` there records both).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import math
import resource
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from muscle.data import split_train_val
from pytest_modelcompat import CompatInputError, atomic_directory, atomic_write, check_writable_dir

STUDENT = "default"          # PEFT's name for the trainable adapter
NEW_TEACHER = "muscle_m2"    # A2 as a frozen second adapter on the student's base (token objective)
TRAINING_JSON = "muscle_training.json"
RUN_JSON = "run.json"        # in the work dir: the config + data a checkpoint belongs to
# What a checkpoint's history holds; a resume across versions would select on fields it lacks.
# 2: validation metrics carry the positions of the rows each candidate flips (selection's noise test).
CHECKPOINT_FORMAT = 2
# Config fields that do not change what a run computes: a resume may differ in these.
_NOT_IDENTITY = ("resume", "output")
# Learning rates per mode: plain LoRA fine-tuning from a fresh adapter, and compatibility training
# from A2 (measured: benchmarks/results/compat.md).
DEFAULT_LR = {"finetune": 2e-4, "train": 1e-3}
# Epochs per mode. train: 0, the interpolated start kept untrained (or A2, by validation): trained on
# from there, every measured run added flips on unseen rows (docs/muscle.md, "Defaults").
# Where untrained output would be A2 itself (_must_train), train runs finetune's count.
DEFAULT_EPOCHS = {"finetune": 3, "train": 0}
# The choice objective's defaults where the new stack is clearly better than the old on validation
# (accuracy above A1's by more than --acc-tolerance). There every mix of the two stacks costs accuracy
# — interpolated starts and old/new output ensembles alike (sst2-better, docs/muscle.md "Defaults") —
# so the student starts at A2 and learns the task from the gold labels, with the instances M1 gets
# right weighing 1 + 5 (PCT's focal weight, its β = 5): a wrong answer there is a negative flip.
NEW_BEATS_OLD_DEFAULTS = {"interpolate": 0.0, "epochs": 2, "ce_weight": 1.0, "focal_weight": 5.0, "train_on": "all"}
# Everywhere else: distillation only, on the instances with something to teach.
DEFAULTS = {"ce_weight": 0.0, "focal_weight": 0.0, "train_on": "disagreement"}
# Every move off A2 needs validation evidence beyond noise: NOISE_Z standard errors of the paired
# difference on the validation rows (a one-sided test at ~2 %), where A2 is the null.
# - "A2 clearly beats A1" (the labels' branch): A2's lead over A1 must exceed --acc-tolerance and
#   NOISE_Z standard errors. On 1,000 PIQA rows where the stacks are level one standard error is
#   ~0.8 pt, so a lead of 0.6 pt is a coin's throw, yet it sent one validation sample of `retrained`
#   to the labels' recipe and a miss.
# - A candidate (start or epoch) replaces A2 only where its validation NFR is below A2's by more than
#   NOISE_Z standard errors. The Gemma default kept an epoch 8 flips below A2's 61 on 1,000 rows and
#   had more flips than A2 on the eval split, at -1.2 pt; GSM8K's kept a start one instance in 100 below
#   A2 and had more too (docs/muscle.md, "Defaults").
NOISE_Z = 2.0


@dataclass
class TrainConfig:
    mode: Literal["finetune", "train"]
    suite: str
    task: str
    output: str
    base: str | None = None             # finetune: the base; train: --new-base override
    old_adapter: str | None = None
    new_adapter: str | None = None
    old_base: str | None = None
    rank: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    add_modules: tuple[str, ...] = ()   # train: modules the student adapts beyond A2's (start at zero)
    interpolate: float | None = None    # train: M1's weight α in the start θ_α (None: validation picks among DEFAULT_ALPHAS where possible)
    lr: float | None = None             # None: DEFAULT_LR of the mode
    epochs: int | None = None           # None: DEFAULT_EPOCHS of the mode
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0
    resume: bool = False
    limit: int | None = None            # first N rows of the train file
    val_rows: int | None = None         # validation rows of those (None: 20 %)
    objective: str | None = None        # train: token | choice | sequence (None: the task kind's default)
    mask: str | None = None             # None: the objective's default (objectives.DEFAULT_MASK)
    temperature: float = 2.0
    ce_weight: float | None = None      # None: DEFAULTS, or NEW_BEATS_OLD_DEFAULTS (choice; after validation)
    old_target: str | None = None       # choice: where the mask says "old", M1 or the M1/M2 ensemble
    new_target: str = "m2"              # choice: where the mask says "new", M2 or the ensemble
    ensemble_weight: float = 0.7        # M1's share in the ensemble
    focal_weight: float | None = None   # choice/sequence: extra weight on instances M1 gets right
    train_on: str | None = None         # choice: instances with something to teach (+ anchors), or "all"
    every_choice: bool = False          # token on multiple choice: distil on every choice's text, not the gold's only
    acc_tolerance: float = 0.005        # selection: accuracy (score) may drop this much below epoch 0's
    select: Literal["nfr", "loss"] | None = None   # default: nfr for train, loss for finetune
    precompute_teachers: bool = False
    top_k: int = 64
    cache: str | None = None            # result cache for teacher predictions (default: the gate's)
    no_cache: bool = False
    device: str = "auto"
    dtype: str = "float32"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def selection(self) -> str:
        return self.select or ("nfr" if self.mode == "train" else "loss")

    def trust(self) -> dict[str, Any]:
        return {"allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code}


def work_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.work")


class _History:
    """Epoch counter and per-epoch metrics, checkpointed with the accelerate state."""

    def __init__(self):
        self.epoch = 0
        self.epochs: list[dict[str, Any]] = []

    def state_dict(self):
        return {"epoch": self.epoch, "history": json.dumps(self.epochs)}

    def load_state_dict(self, state):
        self.epoch, self.epochs = state["epoch"], json.loads(state["history"])


# --------------------------------------------------------------------------------------- the run


def train(config: TrainConfig) -> dict[str, Any]:
    """Run finetune / compatibility training end to end; returns the muscle_training.json content."""
    recipe = Recipe(config)
    try:
        recipe.setup()
        if not recipe.history.epochs:
            recipe.history.epochs.append({"epoch": 0, **recipe.validate_start()})
        for epoch in range(recipe.history.epoch + 1, recipe.config.epochs + 1 if recipe.train_loader else 1):
            train_stats = recipe.train_epoch(epoch)
            recipe.history.epoch = epoch
            recipe.history.epochs.append({"epoch": epoch, "train": train_stats, "val": recipe.validate(epoch)})
            _save_checkpoint(recipe.accelerator, recipe.work / f"epoch-{epoch}", recipe.broadcast)
    finally:
        recipe.stop_progress()
    return recipe.save()


class Recipe:
    """One training run's state; the methods are the steps :func:`train` calls in order."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.started = time.monotonic()
        self.step_times: list[float] = []
        self.teacher_mode: str | None = None
        self.progress = None

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    # ------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
        from torch.utils.data import DataLoader
        from transformers import get_linear_schedule_with_warmup

        from pytest_modelcompat import make_progress, pad_token_id

        self.config, self.task = preflight(self.config)       # every cheap check, before any model loads
        _return_freed_memory_to_the_os()
        config = self.config
        self.output, self.work = Path(config.output), work_dir(config.output)
        self.accelerator = Accelerator(cpu=config.device == "cpu",
                                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        self.broadcast = broadcast_object_list
        self.device = self.accelerator.device
        # multi-CPU ranks report "cpu:0"; load_stack takes "cpu"
        self.device_name = str(self.device) if self.device.type == "cuda" else self.device.type
        self.main = self.accelerator.is_main_process
        # One rich progress display for the whole run, on the main process only.
        self.progress = make_progress(disable=not self.main)
        self.progress.start()
        set_seed(config.seed)
        instances = _train_instances(self.task, config)
        self.train_data = self.task.train_split().fingerprint()
        resuming = _claim_work_dir(self.work, config, self.train_data, self.main)
        self.accelerator.wait_for_everyone()
        self.seen = _rows_trained_on([config.old_adapter, config.new_adapter], self.train_data)
        self.train_inst, self.val_inst = split_train_val(instances, config.seed, config.val_rows, self.seen)
        self.val_seen = sum(inst.id in self.seen for inst in self.val_inst)
        if self.val_seen and self.main:
            self.progress.console.print(
                f"validation: {self.val_seen} of {len(self.val_inst)} rows are rows the adapters were trained on "
                f"(their {TRAINING_JSON}), which favours them; give train: rows held out from their training",
                soft_wrap=True, markup=False)

        # The teachers' predictions come first (from the result cache, or by loading each teacher alone
        # and freeing it), so no teacher is ever resident beside the student. Validation's come before
        # the train split's: A2's accuracy there against A1's decides the defaults preflight left open.
        self.old_val = self._teacher_predictions("old", self.val_inst) if config.mode == "train" else None
        self.new_val = (self._teacher_predictions("new", self.val_inst)
                        if config.objective in ("choice", "sequence") else None)
        self.val_before = self._a2_val_metrics() if self.new_val is not None else None
        self.config, self.new_beats_old = defaults_after_validation(config, self.val_before, len(self.val_inst))
        if _left_to_validation(config, self.val_before) and self.main:
            self.progress.console.print(defaults_line(self.config, self.val_before, self.new_beats_old,
                                                      len(self.val_inst)), soft_wrap=True, markup=False)
        config = self.config
        self.teachers = self._teacher_signals()
        self.model, self.tokenizer, self.base, self.starts = _student(config, self.device_name)
        self.interpolation = None   # the start's Interpolation once chosen (validate_start); None: A2
        # A2 on validation: the accuracy floor of the selection, and a candidate when epoch 0 is not A2.
        self.a2_val = (self.val_before or self._a2_val_metrics()) if self.starts is not None else None
        self.pad_id = pad_token_id(self.tokenizer)
        self.objective = self._objective()
        train_items = self.objective.items(self.train_inst, train=True) if config.epochs else []
        self.val_items = self.objective.items(self.val_inst, start=len(train_items))
        self._attach_teacher_stores(train_items + self.val_items)
        if not train_items and config.epochs and self.main:
            self.progress.console.print("nothing to train on: every train instance's target already equals A2's "
                                        "behaviour; the output is A2 (epoch 0)")

        self.train_loader = DataLoader(train_items, batch_size=config.batch_size, shuffle=bool(train_items),
                                       collate_fn=self.objective.collate)
        self.val_loader = DataLoader(self.val_items, batch_size=config.batch_size, shuffle=False,
                                     collate_fn=self.objective.collate)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate(), weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(self.train_loader) * config.epochs)
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            self.model, optimizer, self.train_loader, scheduler)
        self.history = _History()
        self.accelerator.register_for_checkpointing(self.history)
        _adapter_checkpointing(self.accelerator)
        latest = _latest_checkpoint(self.work) if resuming else None
        if latest is not None:
            self.accelerator.load_state(str(latest))
            # the start was chosen before the first checkpoint; its weights have trained on since
            alpha = self.history.epochs[0].get("alpha")
            self.interpolation = self.starts.report(alpha) if alpha is not None else None

    def _teacher_signals(self):
        """choice / sequence: both teachers' gate predictions on validation and, when the run trains,
        the train split, by instance id."""
        if self.new_val is None:
            return None
        if not self.config.epochs:   # --epochs 0 trains nothing: only validation needs the teachers
            return {"old": self.old_val, "new": self.new_val}
        return {"old": self.old_val | self._teacher_predictions("old", self.train_inst),
                "new": self.new_val | self._teacher_predictions("new", self.train_inst)}

    def _a2_val_metrics(self) -> dict[str, Any]:
        """A2 against M1 on validation, from the gate's (cached) predictions of both."""
        new = self.new_val if self.new_val is not None else self._teacher_predictions("new", self.val_inst)
        return _prediction_metrics(self.task, [self.old_val[inst.id] for inst in self.val_inst],
                                   [new[inst.id] for inst in self.val_inst])

    def _teacher_predictions(self, which: str, instances):
        from muscle.objectives import teacher_predictions
        from pytest_modelcompat import ResultCache, results_dir

        config = self.config
        ref = (config.old_adapter, config.old_base) if which == "old" else (config.new_adapter, config.base)
        cache = None if config.no_cache else ResultCache(Path(config.cache) if config.cache else results_dir())
        options = {"device": self.device_name, "dtype": config.dtype, **config.trust()}
        preds = teacher_predictions(ref, self.task, instances, options=options, cache=cache,
                                    batch_size=max(config.batch_size, 16), progress=self.progress,
                                    label="M1" if which == "old" else "M2")
        return {inst.id: p for inst, p in zip(instances, preds, strict=True)}

    def _objective(self):
        from muscle import objectives

        config, unwrap = self.config, self.accelerator.unwrap_model
        if config.mode == "finetune":
            return objectives.TokenObjective(config, self.task, self.tokenizer, self.pad_id, device=self.device)
        if config.objective in ("choice", "sequence"):
            teachers, self.teacher_mode = self.teachers, "predictions"
            if config.objective == "choice":
                return objectives.ChoiceObjective(config, self.task, self.tokenizer, teachers, self.device,
                                                  model_config=unwrap(self.model).config)
            return objectives.SequenceObjective(config, self.task, self.tokenizer, self.pad_id, teachers, self.device)
        # token: M1 resident on its own base (or precomputed below), M2 as a frozen adapter on ours
        from muscle.losses.token import needs_new_teacher
        from muscle.teachers import teacher_logits
        from pytest_modelcompat import load_stack

        self.old_model = load_stack(config.old_adapter, config.old_base, device=self.device_name,
                                    dtype=config.dtype, **config.trust()).model
        self.teacher_mode = "resident"

        def resident(model, batch):
            new = teacher_logits(unwrap(model), batch, NEW_TEACHER) if needs_new_teacher(config.mask) else None
            return teacher_logits(self.old_model, batch), new

        return objectives.TokenObjective(config, self.task, self.tokenizer, self.pad_id, teachers=resident,
                                         device=self.device)

    def _attach_teacher_stores(self, examples) -> None:
        """Token objective with --precompute-teachers: the teachers' top-k logits to disk once (M2's
        only where the mask can pick it), then M1 and the second adapter are freed, so training
        holds only the student."""
        if not (self.config.objective == "token" and self.config.precompute_teachers):
            return
        from muscle.losses.token import needs_new_teacher
        from muscle.teachers import TeacherStore, precompute

        m1_path, m2_path = self.work / "teacher-m1.safetensors", self.work / "teacher-m2.safetensors"
        with_new = needs_new_teacher(self.config.mask)
        teachers = [(m1_path, self.old_model, None)] + ([(m2_path, self.model, NEW_TEACHER)] if with_new else [])
        if self.main:
            for path, model, adapter in teachers:
                if not path.exists():  # a resumed run reuses them (the work dir is this run's: run.json)
                    precompute(model, examples, path, k=self.config.top_k, batch_size=self.config.batch_size,
                               pad_id=self.pad_id, device=self.device, adapter=adapter, progress=self.progress)
        self.accelerator.wait_for_everyone()
        old, new = TeacherStore(m1_path), TeacherStore(m2_path) if with_new else None
        self.old_model = None
        gc.collect()
        if new is not None:
            self.model.delete_adapter(NEW_TEACHER)
        self.objective.teachers = lambda model, batch: (
            old.batch(batch["index"], self.device), new.batch(batch["index"], self.device) if new else None)
        self.teacher_mode = "precomputed"

    # --------------------------------------------------------------------------------- epoch 0

    def validate_start(self) -> dict[str, Any]:
        """Epoch 0, the student before training: its validation metrics, and for interpolated starts
        which θ_α it is.

        Each θ_α of the grid is validated; the start is the one the selection rule keeps among them and
        A2 (:func:`choose_candidate`: A2's accuracy is the floor), or A2 itself where none beats it. It
        is what trains on, and what save() keeps if epoch 0 wins (saved to the work dir)."""
        if self.starts is None:
            return {"val": self.validate(0)}
        tried = []
        for alpha in self.starts.alphas:
            self.interpolation = self.starts.use(alpha)
            tried.append({"alpha": alpha, "val": self.validate(0)})
        alpha = choose_candidate([(None, self.a2_val)] + [(t["alpha"], t["val"]) for t in tried],
                                 self.task.kind, self.config.acc_tolerance)
        if alpha is None:   # no start beats A2: training starts at A2 itself
            self.interpolation = None
            self.starts.use(0.0)
            val = self.validate(0)     # A2's cached predictions, and the validation loss
        else:
            self.interpolation = self.starts.use(alpha)
            val = next(t["val"] for t in tried if t["alpha"] == alpha)
            if self.main:
                with atomic_directory(self.work / "start") as tmp:
                    _save_student(self.accelerator.unwrap_model(self.model), tmp / "adapter")
        return {"val": val, "alpha": alpha, "starts": tried}

    # ------------------------------------------------------------------------------- one epoch

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.train_loader.set_epoch(epoch)
        self.model.train()
        bar = self.progress.add_task(f"epoch {epoch}/{self.config.epochs}", total=len(self.train_loader))
        sums: dict[str, float] = {}
        for batch in self.train_loader:
            start = time.perf_counter()
            loss, stats = self.objective.loss(self.model, batch)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.step_times.append(time.perf_counter() - start)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            self.progress.update(bar, advance=1,
                                 description=f"epoch {epoch}/{self.config.epochs} loss {stats['loss']:.4f}")
        return {key: value / len(self.train_loader) for key, value in sums.items()}

    def validate(self, epoch: int) -> dict[str, Any]:
        """Validation loss, and the gate's metrics of the student against M1 on the validation split."""
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        preds = None
        if epoch == 0 and self.teachers is not None and self.interpolation is None:
            # Epoch 0 is A2 on the same base, dtype and device: the gate's cached A2 predictions are
            # what scoring it would give (scores do not depend on batch or order), one pass saved.
            preds = [self.teachers["new"][inst.id] for inst in self.val_inst]
        elif self.config.mode == "train" or self.task.kind == "multiple_choice":
            preds = _predictions(model, self.tokenizer, self.task, self.val_inst, base=self.base,
                                 label=f"epoch-{epoch}", device=self.device,
                                 batch_size=max(self.config.batch_size, 16), progress=self.progress)
        val: dict[str, Any] = {"loss": self.objective.validation_loss(model, self.val_loader, preds)}
        if preds is not None:
            old = [self.old_val[inst.id] for inst in self.val_inst] if self.old_val else None
            val |= _prediction_metrics(self.task, old, preds)
        model.train()
        return val

    # ------------------------------------------------------------------------------------- save

    def save(self) -> dict[str, Any]:
        import os

        config = self.config
        chosen = choose_epoch(self.history.epochs, config.selection(), self.task.kind, config.acc_tolerance,
                              baseline=self.a2_val)
        keeps_a2 = chosen is None or (chosen == 0 and self.interpolation is None)
        noise = (within_noise_line(self.history.epochs, self.a2_val, self.task.kind, config.acc_tolerance)
                 if keeps_a2 and config.selection() == "nfr" else None)
        if noise and self.main:
            self.progress.console.print(noise, soft_wrap=True, markup=False)
        # The record is shipped with the adapter: local paths are stored relative to the suite file's
        # directory (no machine paths); hub names and None stay as they are. A base that exists here
        # is local (the stack loaded it as a dir or .gguf); one that does not was loaded as a hub name.
        suite_dir = os.path.dirname(os.path.abspath(os.path.expanduser(config.suite)))

        def portable(value: str | None, always_local: bool) -> str | None:
            if value is None:
                return None
            path = os.path.expanduser(value)
            if not (always_local or os.path.exists(path)):
                return value
            try:
                return os.path.relpath(os.path.abspath(path), suite_dir)
            except ValueError:   # another drive (Windows): no relative form
                return value

        stored = asdict(config)
        for key in ("suite", "output", "old_adapter", "new_adapter", "cache"):
            stored[key] = portable(stored[key], always_local=True)
        for key in ("base", "old_base"):
            stored[key] = portable(stored[key], always_local=False)
        record = {
            "config": stored,
            "task": {"name": self.task.name, "kind": self.task.kind, "n_train": len(self.train_inst),
                     "n_val": len(self.val_inst),
                     # the rows of this train data the output's weights learnt from: the kept epoch's
                     # train rows and what the adapters it came from had seen (A2, or A1 and A2; a
                     # superset where A2 itself is kept). A later `muscle train` on the same train data
                     # validates elsewhere first (_rows_trained_on).
                     "train_data": self.train_data,
                     "trained_on": sorted(self.seen | ({i.id for i in self.train_inst} if chosen else set())),
                     "val_rows_adapters_trained_on": self.val_seen},
            "teachers": self.teacher_mode,
            "epochs": self.history.epochs,
            "start": asdict(self.interpolation) if self.interpolation is not None else "A2",
            "a2_val": self.a2_val,
            # the validation accuracies that chose the defaults (NEW_BEATS_OLD_DEFAULTS or DEFAULTS)
            "new_beats_old": self.new_beats_old,
            "val_acc": ({"old": self.val_before.get("acc_old"), "new": self.val_before.get("acc")}
                        if self.val_before is not None else None),
            # the noise the gap was tested against (beats_old): one standard error of A2's accuracy − A1's
            "val_gap_se": (lead_standard_error(self.val_before, len(self.val_inst))
                           if self.val_before is not None and "pfr" in self.val_before else None),
            "chosen_epoch": chosen,
            "kept": "A2" if keeps_a2 else f"epoch {chosen}",
            "selection": config.selection(),
            "step_time_s": statistics.median(self.step_times) if self.step_times else None,
            "wall_s": round(time.monotonic() - self.started, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "num_processes": self.accelerator.num_processes,
        }
        self.accelerator.wait_for_everyone()
        if self.main:
            with atomic_directory(self.output) as tmp:
                if keeps_a2:   # nothing beat A2 on validation: A2 itself is the answer
                    _copy_adapter_files(Path(config.new_adapter), tmp)
                else:
                    kept = self.work / ("start" if chosen == 0 else f"epoch-{chosen}") / "adapter"
                    for item in kept.iterdir():
                        shutil.copy2(item, tmp / item.name)
                atomic_write(tmp / TRAINING_JSON, json.dumps(record, indent=1) + "\n")
            shutil.rmtree(self.work, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return record


# ------------------------------------------------------------------------------------ preflight


def preflight(config: TrainConfig):
    """Every check that needs no model, in one place: (config with defaults filled in, resolved task).

    Raises CompatInputError (one line naming the fix) on the first problem; writes nothing.
    """
    from muscle.losses import MASKS, OBJECTIVES
    from muscle.losses.choice import NEW_TARGETS, OLD_TARGETS
    from muscle.objectives import DEFAULT_MASK, DEFAULT_OBJECTIVE, DEFAULT_OLD_TARGET, check_objective
    from pytest_modelcompat import load_suite, resolve_task

    if config.mode == "train" and not (config.old_adapter and config.new_adapter):
        raise CompatInputError("muscle train needs --old-adapter A1 and --new-adapter A2")
    if config.mode == "finetune" and not config.base:
        raise CompatInputError("muscle finetune needs --base (a model dir, hub name or .gguf file)")
    if config.mode == "finetune" and config.select == "nfr":
        raise CompatInputError("--select nfr needs an old model; use it with `muscle train`, or --select loss")
    if config.objective is not None and config.objective not in OBJECTIVES:
        raise CompatInputError(f"--objective {config.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    if config.mask is not None and config.mask not in MASKS:
        raise CompatInputError(f"--mask {config.mask!r} is unknown; choose one of {', '.join(MASKS)}")
    if config.train_on not in (None, "disagreement", "all"):
        raise CompatInputError(f"--train-on {config.train_on!r} is unknown; choose disagreement or all")
    if config.new_target not in NEW_TARGETS:
        raise CompatInputError(f"--new-target {config.new_target!r} is unknown; choose one of {', '.join(NEW_TARGETS)}")
    if config.old_target is not None and config.old_target not in OLD_TARGETS:
        raise CompatInputError(f"--old-target {config.old_target!r} is unknown; choose one of {', '.join(OLD_TARGETS)}")
    if config.epochs is not None and (config.epochs < 0 or (config.epochs == 0 and _must_train(config))):
        raise CompatInputError("--epochs must be a positive integer (0 only for `muscle train` from an "
                               "interpolated start, selected by validation NFR: it keeps the start or A2)")
    for name in ("batch_size", "max_length", "rank", "top_k"):
        if getattr(config, name) < 1:
            raise CompatInputError(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("ce_weight", "ensemble_weight", "interpolate"):
        if getattr(config, name) is not None and not 0.0 <= getattr(config, name) <= 1.0:
            raise CompatInputError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if config.add_modules and config.interpolate:
        raise CompatInputError("--add-modules widens A2 as the start; --interpolate starts elsewhere: "
                               "pass one of them (--interpolate 0 with --add-modules)")
    if (config.focal_weight or 0.0) < 0 or config.acc_tolerance < 0:
        raise CompatInputError("--focal-weight and --acc-tolerance must be zero or positive")
    if config.temperature <= 0 or config.learning_rate() <= 0:
        raise CompatInputError("--temperature and --lr must be positive")
    for name in ("limit", "val_rows"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise CompatInputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(config, name)}")
    check_writable_dir(config.output, "--output")
    if config.cache and not config.no_cache:
        check_writable_dir(config.cache, "--cache")
    tasks = {t.name: t for t in load_suite(config.suite)}
    if config.task not in tasks:
        raise CompatInputError(f"task {config.task!r} is not in {config.suite}; choose one of {', '.join(tasks)}")
    task = resolve_task(tasks[config.task])
    # Where every loss option is left out, the choice objective's loss waits for A2's validation
    # accuracy against A1's (defaults_after_validation); a loss option given is the user's choice.
    loss_given = any(getattr(config, k) is not None for k in ("mask", "old_target", "ce_weight", "focal_weight",
                                                               "train_on"))
    if config.mode == "train":
        objective = config.objective or DEFAULT_OBJECTIVE[task.kind]
        config = dataclasses.replace(config, objective=objective, mask=config.mask or DEFAULT_MASK[objective],
                                     old_target=config.old_target or DEFAULT_OLD_TARGET[objective])
        check_objective(objective, config.mask, task.kind, task.name, (config.old_target, config.new_target))
        if config.every_choice and (objective != "token" or task.kind != "multiple_choice"):
            raise CompatInputError("--every-choice applies to --objective token on a multiple-choice task; "
                                   f"drop it for --objective {objective} on {task.name!r} ({task.kind})")
        differs = _check_stacks(config)
        if differs is not None:
            _check_across_families(config, differs)
            config = dataclasses.replace(config, interpolate=0.0)   # another family: the start is A2
    waits_for_validation = config.mode == "train" and config.objective == "choice" and not loss_given
    if not waits_for_validation:
        config = dataclasses.replace(config, **{k: v for k, v in DEFAULTS.items() if getattr(config, k) is None})
        if config.epochs is None:
            config = dataclasses.replace(config, epochs=_default_epochs(config))
    return config, task


def _must_train(config: TrainConfig) -> bool:
    """Whether untrained output would be the start itself: finetune, a start at A2 (--interpolate 0,
    --add-modules, another base family) or selection by loss. Untrained output needs a start that is
    not A2 and selection by NFR; otherwise epochs must run."""
    return (config.mode == "finetune" or config.interpolate == 0.0 or bool(config.add_modules)
            or config.select == "loss")


def _default_epochs(config: TrainConfig) -> int:
    return DEFAULT_EPOCHS["finetune" if _must_train(config) else "train"]


def defaults_after_validation(config: TrainConfig, val: dict[str, Any] | None,
                              n_val: int) -> tuple[TrainConfig, bool]:
    """(``config`` with the defaults preflight left open filled in, whether the new stack beats the old).

    ``val``: A2 against M1 on ``n_val`` validation rows. With the choice objective and no loss option
    given (preflight left ``ce_weight`` open), where A2 is clearly better than A1 (:func:`beats_old`),
    the options left out take NEW_BEATS_OLD_DEFAULTS, elsewhere DEFAULTS (and an untrained interpolated
    start). An explicit ``--epochs 0`` (keep an untrained start) learns nothing from labels, so it
    keeps DEFAULTS."""
    beats = (_left_to_validation(config, val) and config.epochs != 0
             and beats_old(val, n_val, config.acc_tolerance))
    values = NEW_BEATS_OLD_DEFAULTS if beats else {**DEFAULTS, "epochs": _default_epochs(config)}
    return dataclasses.replace(config, **{k: v for k, v in values.items() if getattr(config, k) is None}), beats


def paired_standard_error(plus: float, minus: float, n: int) -> float:
    """The standard error of the mean of n paired per-row differences that are +1 on a share ``plus``
    of the rows, −1 on ``minus`` and 0 elsewhere: their variance is plus + minus − (plus − minus)²."""
    mean = plus - minus
    return math.sqrt(max(plus + minus - mean * mean, 0.0) / n)


def lead_standard_error(val: dict[str, Any], n_val: int) -> float:
    """The standard error of A2's accuracy minus A1's on the same ``n_val`` rows: per row the difference
    is +1 (positive flip), −1 (negative flip) or 0."""
    return paired_standard_error(val["pfr"], val["nfr"], n_val)


def beats_old_margin(val: dict[str, Any], n_val: int, acc_tolerance: float) -> float:
    """The lead A2's validation accuracy must exceed: ``acc_tolerance`` or NOISE_Z standard errors of
    the difference, whichever is larger."""
    return max(acc_tolerance, NOISE_Z * lead_standard_error(val, n_val))


def beats_old(val: dict[str, Any], n_val: int, acc_tolerance: float) -> bool:
    """Whether A2's validation accuracy exceeds A1's by more than :func:`beats_old_margin`."""
    return val["acc"] - val["acc_old"] > beats_old_margin(val, n_val, acc_tolerance) + 1e-12


def _left_to_validation(config: TrainConfig, val: dict[str, Any] | None) -> bool:
    """Whether the choice objective's loss was left open (no loss option given) and validation can decide."""
    return config.objective == "choice" and config.ce_weight is None and val is not None


def defaults_line(config: TrainConfig, val: dict[str, Any], beats: bool, n_val: int) -> str:
    """One console line: what validation decided where the options were left to it."""
    margin = beats_old_margin(val, n_val, config.acc_tolerance)
    gap = f"validation ({n_val} rows): A2 {val['acc']:.3f}, A1 {val['acc_old']:.3f}"
    test = f"by more than {100 * margin:.1f} pt (--acc-tolerance, and {NOISE_Z:g} standard errors of the gap)"
    if beats:
        return (f"{gap}: A2 beats A1 {test}, so {config.epochs} epochs of cross-entropy on "
                f"the gold choice from A2, instances A1 gets right weighing {1 + config.focal_weight:g}")
    what = (f"{config.epochs} epochs of distillation (mask {config.mask})" if config.epochs
            else "the interpolated starts untrained, validation keeps one or A2")
    return f"{gap}: A2 not above A1 {test}, so {what}"


def _check_across_families(config: TrainConfig, differs: str) -> None:
    """The bases differ in architecture (``differs`` says where): another base family, so there is no
    interpolated start and the student starts at A2; refuse what needs a start elsewhere."""
    if config.interpolate:
        raise CompatInputError(f"--interpolate needs old and new bases of one architecture; they differ "
                               f"({differs}): leave it out or pass --interpolate 0")
    if config.epochs == 0:
        raise CompatInputError(f"the old and new bases differ in architecture ({differs}), so the student "
                               "starts at A2 and --epochs 0 has nothing to keep: pass --epochs N to distil "
                               "(--objective choice / sequence work across tokenizers)")


def _check_stacks(config: TrainConfig) -> str | None:
    """What load_stack would refuse of the two stacks, and (token) their vocabularies; returns what
    differs between the two bases' architectures (parameter names and shapes, read from their configs
    without weights), None where they share one or a config cannot be read without loading."""
    from muscle.interpolation import shape_difference
    from pytest_modelcompat import check_stack_files, linear_module_names, load_tokenizer, parameter_shapes

    old_base, new_base = (
        check_stack_files(adapter, base, allow_pickle=config.allow_pickle, which=which)
        for which, adapter, base in (("old", config.old_adapter, config.old_base),
                                     ("new", config.new_adapter, config.base))
    )
    if config.add_modules:
        linear = linear_module_names(new_base, trust_remote_code=config.trust_remote_code)
        unknown = sorted(set(config.add_modules) - linear) if linear is not None else []
        if unknown:
            raise CompatInputError(f"--add-modules: the new base has no linear layer named {', '.join(unknown)}; "
                                   f"choose among {', '.join(sorted(linear))}")
    # choice/sequence learn from predictions: the stacks may tokenize differently. token compares
    # before the adapters load: an adapter on lm_head would otherwise fail first, as a shape error.
    if config.objective == "token":
        old_tok = load_tokenizer(old_base, trust_remote_code=config.trust_remote_code)
        new_tok = load_tokenizer(new_base, trust_remote_code=config.trust_remote_code)
        if old_tok.get_vocab() != new_tok.get_vocab():
            raise CompatInputError(
                f"the old stack ({config.old_adapter}) and the new stack ({config.new_adapter}) have different "
                "tokenizer vocabularies; --objective token needs identical vocabularies — use --objective choice "
                "(multiple choice) or --objective sequence (generation), which work across tokenizers")
    old_shapes, new_shapes = (parameter_shapes(base, trust_remote_code=config.trust_remote_code)
                              for base in (old_base, new_base))
    if old_shapes is None or new_shapes is None:
        return None
    return shape_difference(old_shapes, new_shapes)


def _claim_work_dir(work: Path, config: TrainConfig, train_data: str, main: bool) -> bool:
    """Make ``work`` this run's (``run.json``: config + train-data fingerprint); True when resuming.

    A fresh run clears older checkpoints. ``--resume`` refuses, before anything is written, a
    checkpoint made with another config or other data: continuing it would mix two runs.
    """
    identity = {"config": {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY},
                "data": train_data, "format": CHECKPOINT_FORMAT}
    identity = json.loads(json.dumps(identity, default=str))   # as it reads back (tuples become lists)
    recorded = work / RUN_JSON
    if config.resume and recorded.is_file():
        before = json.loads(recorded.read_text())
        if before.get("format") != CHECKPOINT_FORMAT:
            raise CompatInputError(f"--resume: the checkpoint in {work} was written by another version of muscle; "
                                   "rerun without --resume to start over")
        if before != identity:
            changed = sorted(k for k in set(before["config"]) | set(identity["config"])
                             if before["config"].get(k) != identity["config"].get(k))
            what = f"options {', '.join(changed)}" if changed else "train data"
            raise CompatInputError(f"--resume: the checkpoint in {work} was made with other {what}; "
                                   "rerun with the same options and data, or without --resume to start over")
        return True
    if main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        atomic_write(recorded, json.dumps(identity, indent=1) + "\n")
    return False


# ------------------------------------------------------------------------------------ components


# glibc mallopt parameter: allocations at least this big are mmapped (and unmapped when freed)
_M_MMAP_THRESHOLD = -3


def _return_freed_memory_to_the_os() -> None:
    """Keep RSS near the real peak. Every training step allocates tensors of new shapes (packed
    batches of varying length); glibc then raises its mmap threshold (up to 32 MiB) and serves
    them from heaps that fragment, so freed memory is never returned: a PIQA choice run climbed to
    17.5 GB RSS. A fixed 1 MiB threshold (which also stops the adjustment) gives big blocks back
    when freed; measured on 7 real steps, RSS after a step 1.2 GB instead of 7.6 GB, same peak
    within a step. A no-op where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def _train_instances(task, config: TrainConfig):
    from pytest_modelcompat import load_instances

    return load_instances(task, split="train", limit=config.limit)


def _rows_trained_on(adapters, train_data: str) -> frozenset[str]:
    """Ids of the train rows the given adapters were trained on, from their muscle_training.json where
    it names the same train data (an id of other data is another row). An adapter not made by
    `muscle` has no record: nothing is known of its rows."""
    seen: set[str] = set()
    for adapter in adapters:
        if adapter is None:
            continue
        try:
            task = json.loads((Path(adapter) / TRAINING_JSON).read_text()).get("task")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(task, dict) and task.get("train_data") == train_data:
            seen.update(str(i) for i in task.get("trained_on", ()))
    return frozenset(seen)


def _student(config: TrainConfig, device: str):
    """(PEFT model with a trainable STUDENT adapter [+ frozen NEW_TEACHER for token], tokenizer, base ref,
    the InterpolatedStarts the student can be set to, or None where it starts at A2)."""
    from peft import LoraConfig, get_peft_model

    from muscle.losses.token import needs_new_teacher
    from pytest_modelcompat import attach_adapter, load_base, quiet_third_party_output, read_adapter_config

    quiet_third_party_output()

    opts = {"device": device, "dtype": config.dtype, **config.trust()}
    if config.mode == "finetune":
        model, tokenizer, _ = load_base(config.base, **opts)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                          task_type="CAUSAL_LM")
        return get_peft_model(model, lora), tokenizer, model.name_or_path, None
    base = config.base or read_adapter_config(config.new_adapter).get("base_model_name_or_path")
    if not base:
        raise CompatInputError(f"adapter {config.new_adapter!r} does not name its base; pass --new-base")
    model, tokenizer, _ = load_base(base, **opts)
    starts = None
    if config.add_modules:
        model = _widened_student(model, config)
    elif config.interpolate != 0.0 and (starts := _interpolated_starts(model, config, opts)) is not None:
        model = starts.model
    else:
        model = attach_adapter(model, config.new_adapter, name=STUDENT, trainable=True,
                               allow_pickle=config.allow_pickle)
    # The output adapter names the base it was trained on (A2's config may name its base otherwise);
    # PEFT also reads it when saving, to check the vocabulary.
    model.peft_config[STUDENT].base_model_name_or_path = model.base_model.model.name_or_path
    if config.objective == "token" and needs_new_teacher(config.mask):
        attach_adapter(model, config.new_adapter, name=NEW_TEACHER, allow_pickle=config.allow_pickle)
    return model, tokenizer, model.base_model.model.name_or_path, starts


def _interpolated_starts(base, config: TrainConfig, opts: dict):
    """The student on ``base`` as InterpolatedStarts (the grid DEFAULT_ALPHAS, or --interpolate's one
    α); None where the default meets two architectures (another base family: the student starts at
    A2, as MUSCLE does)."""
    from muscle.interpolation import DEFAULT_ALPHAS, ArchitectureMismatch, load_interpolated_starts

    alphas = DEFAULT_ALPHAS if config.interpolate is None else (config.interpolate,)
    try:
        return load_interpolated_starts(base, (config.old_adapter, config.old_base),
                                        (config.new_adapter, config.base), alphas, STUDENT, **opts)
    except ArchitectureMismatch as exc:   # bases whose configs preflight could not read
        _check_across_families(config, str(exc))
        return None
    except ValueError as exc:   # identical stacks
        raise CompatInputError(str(exc)) from None


def _widened_student(model, config: TrainConfig):
    """A2's adapter extended to ``config.add_modules``: A2's LoRA weights where A2 has them, fresh LoRA
    pairs elsewhere. PEFT initialises every B to zero, so the student starts exactly as A2; the extra
    modules give it room to follow an update that touched more than A2's modules."""
    from peft import LoraConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    from pytest_modelcompat import check_adapter_files

    check_adapter_files(config.new_adapter, allow_pickle=config.allow_pickle)
    lora = LoraConfig.from_pretrained(config.new_adapter)
    lora.target_modules = sorted(set(lora.target_modules) | set(config.add_modules))
    lora.inference_mode = False
    lora.base_model_name_or_path = model.name_or_path   # the base it trains on (A2's may name it otherwise)
    try:
        model = get_peft_model(model, lora, adapter_name=STUDENT)
    except ValueError as exc:   # a module name the base does not have
        raise CompatInputError(f"--add-modules: {exc}".splitlines()[0]) from None
    loaded = set_peft_model_state_dict(model, load_peft_weights(str(config.new_adapter)),
                                       adapter_name=STUDENT)
    if loaded.unexpected_keys:
        raise CompatInputError(f"adapter {config.new_adapter!r} has weights the widened student lacks "
                               f"({loaded.unexpected_keys[0]}); pass the base it was trained on")
    return model


def _predictions(model, tokenizer, task, instances, *, base: str, label: str, device, batch_size: int, progress):
    """The gate's predictions of the model being trained (not cached: it changes every epoch)."""
    from pytest_modelcompat import Stack, predict

    stack = Stack(model=model, tokenizer=tokenizer, adapter=label, base=base, fingerprint=label, device=device)
    return predict(stack, task, instances, batch_size=batch_size, progress=progress,
                            description=f"validating {label}")


def _prediction_metrics(task, old_preds, new_preds) -> dict[str, Any]:
    """The gate's metrics of ``new_preds`` against ``old_preds`` on validation, plus ``n`` and
    ``flipped``: the positions of the rows in the gate's negative-flip quadrant (for generative tasks
    a lower similarity), which the selection's noise test pairs across candidates (:func:`beats_a2`)."""
    from pytest_modelcompat import (
        discriminative_metrics,
        discriminative_quadrants,
        generative_metrics,
        generative_quadrants,
    )

    if task.kind == "generative":
        new_scores = [p.score for p in new_preds]
        if not old_preds:
            return {"score": generative_metrics(new_scores, new_scores)["score_new"], "nfr_smooth": None}
        columns = ([p.score for p in old_preds], new_scores)
        m, quadrants = generative_metrics(*columns), generative_quadrants(*columns)
        metrics = {"score": m["score_new"], "nfr_smooth": m["nfr_smooth"]}
    else:
        new_correct = [bool(p.correct) for p in new_preds]
        if not old_preds:
            return {"acc": sum(new_correct) / len(new_correct)}
        columns = ([bool(p.correct) for p in old_preds], new_correct, [p.pred for p in old_preds],
                   [p.pred for p in new_preds])
        m, quadrants = discriminative_metrics(*columns), discriminative_quadrants(*columns)
        metrics = {"acc": m["acc_new"], "acc_old": m["acc_old"], "nfr": m["nfr"], "pfr": m["pfr"], "nfr_mc": m["nfr_mc"]}
    return metrics | {"n": len(new_preds), "flipped": [i for i, q in enumerate(quadrants) if q == "negative_flip"]}


def choose_epoch(history: list[dict[str, Any]], selection: str, kind: str, acc_tolerance: float = 0.005,
                 baseline: dict[str, Any] | None = None) -> int | None:
    """The epoch to keep; None for A2 itself.

    ``loss`` (finetune): the trained epoch with the lowest validation loss. ``nfr`` (train):
    :func:`choose_candidate` over A2 and the epochs. Epoch 0 is A2 unless ``baseline`` is given (A2's
    validation metrics, when epoch 0 is an interpolated start).
    """
    if selection == "loss":
        trained = [h for h in history if h["epoch"] >= 1]
        return min(trained, key=lambda h: (h["val"]["loss"], h["epoch"]))["epoch"]
    return choose_candidate(_candidates(history, baseline), kind, acc_tolerance)


def _candidates(history: list[dict[str, Any]], baseline: dict[str, Any] | None) -> list[tuple[Any, dict[str, Any]]]:
    """(epoch, validation metrics) of A2 and every epoch, A2 first (None where epoch 0 is not A2)."""
    candidates = [(h["epoch"], h["val"]) for h in history]
    if baseline is not None:
        candidates.insert(0, (None, baseline))
    return candidates


def within_noise_line(history: list[dict[str, Any]], baseline: dict[str, Any] | None, kind: str,
                      acc_tolerance: float) -> str | None:
    """Where selection kept A2 although a candidate above the accuracy floor flipped less on
    validation, one console line saying so and why; else None."""
    flip, gain = _measures(kind)
    (_, a2), *epochs = _candidates(history, baseline)
    others = ([(f"start θ_{t['alpha']:g}", t["val"]) for t in history[0].get("starts", [])]
              + [(f"epoch {epoch}", val) for epoch, val in epochs])
    fewer = [(name, val) for name, val in others if val[flip] < a2[flip] and _above_floor(a2, val, gain, acc_tolerance)]
    if not fewer:
        return None
    name, val = min(fewer, key=lambda c: c[1][flip])
    margin = NOISE_Z * flip_gain_standard_error(a2, val)
    return (f"kept A2: {name}'s validation {flip} {val[flip]:.4f} against A2's {a2[flip]:.4f} on {val['n']} "
            f"rows is within noise (a gain must exceed {NOISE_Z:g} standard errors, {margin:.4f}); "
            "more validation rows (--val-rows) can show a smaller gain")


def choose_candidate(candidates: list[tuple[Any, dict[str, Any]]], kind: str, acc_tolerance: float) -> Any:
    """The key selection keeps of (key, validation metrics) pairs, the first of them A2.

    A candidate can replace A2 where its validation accuracy (score for generative tasks) is at least
    A2's − ``acc_tolerance`` and its validation NFR (smooth NFR) is below A2's beyond noise
    (:func:`beats_a2`). Of those, the lowest NFR, then the higher accuracy, then the earlier candidate
    (the starts from the new stack's side first, then the epochs); where there is none, A2.
    """
    flip, gain = _measures(kind)
    a2 = candidates[0][1]
    better = [(i, val) for i, (_, val) in enumerate(candidates)
              if i > 0 and _above_floor(a2, val, gain, acc_tolerance) and beats_a2(a2, val, flip)]
    if not better:
        return candidates[0][0]
    return candidates[min(better, key=lambda c: (c[1][flip], -c[1][gain], c[0]))[0]][0]


def _measures(kind: str) -> tuple[str, str]:
    """(the flip rate selection lowers, the accuracy it keeps) for a task kind."""
    return ("nfr_smooth", "score") if kind == "generative" else ("nfr", "acc")


def _above_floor(a2: dict[str, Any], val: dict[str, Any], gain: str, acc_tolerance: float) -> bool:
    """Whether a candidate's validation accuracy (score) is at least A2's − ``acc_tolerance``."""
    return val[gain] >= a2[gain] - acc_tolerance - 1e-12


def flip_gain_standard_error(a2: dict[str, Any], val: dict[str, Any]) -> float:
    """The standard error of A2's validation NFR minus a candidate's on the same rows: per row the
    difference is +1 (only A2 flips it), −1 (only the candidate) or 0."""
    a2_flips, own_flips, n = set(a2["flipped"]), set(val["flipped"]), val["n"]
    return paired_standard_error(len(a2_flips - own_flips) / n, len(own_flips - a2_flips) / n, n)


def beats_a2(a2: dict[str, Any], val: dict[str, Any], flip: str = "nfr") -> bool:
    """Whether a candidate's validation ``flip`` rate is below A2's by more than NOISE_Z standard errors
    of the paired difference (:func:`flip_gain_standard_error`)."""
    return a2[flip] - val[flip] > NOISE_Z * flip_gain_standard_error(a2, val) + 1e-12


def _copy_adapter_files(adapter: Path, out: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, out / name)


def _save_student(model, path: Path) -> None:
    """The student adapter alone, as PEFT writes it. The vocabulary never changes here, so PEFT is told
    not to check for a resized embedding: its check looks for the base's config.json by path (a GGUF
    base has none there) and would warn, or ask the Hub."""
    model.save_pretrained(path, selected_adapters=[STUDENT], save_embedding_layers=False)


def _adapter_checkpointing(accelerator) -> None:
    """Checkpoint only the student adapter (safetensors), not the frozen base weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            _save_student(accelerator.unwrap_model(models[0]), Path(output_dir) / "adapter")
        weights.clear()

    def load_hook(models, input_dir):
        state = load_file(Path(input_dir) / "adapter" / "adapter_model.safetensors")
        set_peft_model_state_dict(accelerator.unwrap_model(models[0]), state, adapter_name=STUDENT)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator, path: Path, broadcast_object_list) -> None:
    """save_state into a temp dir the main process renames into place once every rank has written."""
    from contextlib import nullcontext

    with atomic_directory(path) if accelerator.is_main_process else nullcontext() as tmp:
        [tmp] = broadcast_object_list([str(tmp) if tmp is not None else None])
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()


def _latest_checkpoint(work: Path) -> Path | None:
    epochs = sorted((int(p.name.split("-")[1]), p) for p in work.glob("epoch-*") if p.name.split("-")[1].isdigit())
    return epochs[-1][1] if epochs else None
