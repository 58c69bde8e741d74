"""One accelerate training loop for `muscle finetune` (cross-entropy) and `muscle train` (MUSCLE).

- finetune: base + fresh LoRA, CE on the gold continuation tokens.
- train: student = new base + LoRA initialised from A2 (trainable); teachers M1 = old base + A1 and
  M2 = A2 loaded as a second, frozen adapter on the student's own base (no second base copy).
  With ``precompute_teachers`` both teachers are run once over the data (top-k logits on disk, see
  muscle/teachers.py) and M1 is freed before training, so training holds only the student.

Every epoch ends with validation on the held-out 20 %: loss, and (train, and finetune on
multiple-choice tasks) the gate's own predictions via ``evaluate.predict`` → accuracy and, for
train, NFR against M1's predictions. The checkpoint (adapter, optimizer, scheduler, sampler, RNG
states, progress) goes to ``<OUT>.work/epoch-N`` via ``Accelerator.save_state``; ``resume``
continues from the latest one exactly. OUT is written once, at the end, through
``atomic_directory``: the chosen epoch's PEFT adapter + ``muscle_training.json``.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from muscle.data import build_examples, collate, split_train_val
from pytest_modelcompat.atomic import atomic_directory, atomic_write, check_writable_dir
from pytest_modelcompat.errors import CompatInputError

STUDENT = "default"          # PEFT's name for the trainable adapter
NEW_TEACHER = "muscle_m2"    # A2 as a frozen second adapter on the student's base
TRAINING_JSON = "muscle_training.json"


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
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0
    resume: bool = False
    limit: int | None = None            # first N rows of the train file
    mask: str = "paper"
    temperature: float = 2.0
    ce_weight: float = 0.0
    select: Literal["nfr", "loss"] | None = None   # default: nfr for train, loss for finetune
    precompute_teachers: bool = False
    top_k: int = 64
    device: str = "auto"
    dtype: str = "float32"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def selection(self) -> str:
        return self.select or ("nfr" if self.mode == "train" else "loss")


def work_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.work")


class _Progress:
    """Epoch counter and per-epoch metrics, checkpointed with the accelerate state."""

    def __init__(self):
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    def state_dict(self):
        return {"epoch": self.epoch, "history": json.dumps(self.history)}

    def load_state_dict(self, state):
        self.epoch, self.history = state["epoch"], json.loads(state["history"])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _find_task(config: TrainConfig):
    from pytest_modelcompat.suite import load_suite, resolve_task

    tasks = {t.name: t for t in load_suite(config.suite)}
    if config.task not in tasks:
        raise CompatInputError(f"task {config.task!r} is not in {config.suite}; choose one of {', '.join(tasks)}")
    return resolve_task(tasks[config.task])


def _check_config(config: TrainConfig) -> None:
    from muscle.loss import MASKS

    if config.mode == "train" and not (config.old_adapter and config.new_adapter):
        raise CompatInputError("muscle train needs --old-adapter A1 and --new-adapter A2")
    if config.mode == "finetune" and not config.base:
        raise CompatInputError("muscle finetune needs --base (a model dir, hub name or .gguf file)")
    if config.mode == "finetune" and config.select == "nfr":
        raise CompatInputError("--select nfr needs an old model; use it with `muscle train`, or --select loss")
    if config.mask not in MASKS:
        raise CompatInputError(f"--mask {config.mask!r} is unknown; choose one of {', '.join(MASKS)}")
    for name in ("epochs", "batch_size", "max_length", "rank", "top_k"):
        if getattr(config, name) < 1:
            raise CompatInputError(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0.0 <= config.ce_weight <= 1.0:
        raise CompatInputError("--ce-weight must be between 0 and 1")
    if config.temperature <= 0 or config.lr <= 0:
        raise CompatInputError("--temperature and --lr must be positive")
    if config.limit is not None and config.limit < 1:
        raise CompatInputError(f"--limit must be a positive integer, got {config.limit}")
    check_writable_dir(config.output, "--output")
    if config.mode == "train":  # cheap checks before the first (slow) model load
        from pytest_modelcompat.stack import check_stack_files, load_tokenizer

        old_base, new_base = (
            check_stack_files(adapter, base, allow_pickle=config.allow_pickle, which=which)
            for which, adapter, base in (("old", config.old_adapter, config.old_base),
                                         ("new", config.new_adapter, config.base))
        )
        # Before the adapters: an adapter on lm_head would otherwise fail first, as a shape error.
        _same_vocabulary(load_tokenizer(old_base, trust_remote_code=config.trust_remote_code),
                         load_tokenizer(new_base, trust_remote_code=config.trust_remote_code),
                         config.old_adapter, config.new_adapter)


def _same_vocabulary(old_tok, new_tok, old: str, new: str) -> None:
    if old_tok.get_vocab() != new_tok.get_vocab():
        raise CompatInputError(
            f"the old stack ({old}) and the new stack ({new}) have different tokenizer vocabularies; "
            "token-level MUSCLE needs identical vocabularies — use bases that share a tokenizer")


def _student(config: TrainConfig, device: str):
    """(PEFT model with a trainable STUDENT adapter [+ frozen NEW_TEACHER], tokenizer, base ref)."""
    from peft import LoraConfig, get_peft_model

    from pytest_modelcompat.stack import attach_adapter, load_base, read_adapter_config

    opts = {"device": device, "dtype": config.dtype, "allow_pickle": config.allow_pickle,
            "trust_remote_code": config.trust_remote_code}
    if config.mode == "finetune":
        model, tokenizer, _ = load_base(config.base, **opts)
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.target_modules),
                          task_type="CAUSAL_LM")
        return get_peft_model(model, lora), tokenizer, model.name_or_path
    base = config.base or read_adapter_config(config.new_adapter).get("base_model_name_or_path")
    if not base:
        raise CompatInputError(f"adapter {config.new_adapter!r} does not name its base; pass --new-base")
    model, tokenizer, _ = load_base(base, **opts)
    model = attach_adapter(model, config.new_adapter, name=STUDENT, trainable=True, allow_pickle=config.allow_pickle)
    attach_adapter(model, config.new_adapter, name=NEW_TEACHER, allow_pickle=config.allow_pickle)
    return model, tokenizer, model.base_model.model.name_or_path


def _val_predictions(model, tokenizer, task, instances, *, base: str, label: str, device, batch_size: int):
    from pytest_modelcompat import evaluate
    from pytest_modelcompat.stack import Stack

    was_training = model.training
    model.eval()
    try:
        stack = Stack(model=model, tokenizer=tokenizer, adapter=label, base=base, fingerprint=label,
                      device=device)
        return evaluate.predict(stack, task, instances, batch_size=batch_size)
    finally:
        model.train(was_training)


def _prediction_metrics(task, old_preds, new_preds) -> dict[str, float | None]:
    from pytest_modelcompat.metrics import discriminative_metrics, generative_metrics

    if task.kind == "generative":
        m = generative_metrics([p.score for p in old_preds] if old_preds else [p.score for p in new_preds],
                               [p.score for p in new_preds])
        return {"score": m["score_new"], "nfr_smooth": m["nfr_smooth"] if old_preds else None}
    new_correct = [bool(p.correct) for p in new_preds]
    if not old_preds:
        return {"acc": sum(new_correct) / len(new_correct)}
    m = discriminative_metrics([bool(p.correct) for p in old_preds], new_correct,
                               [p.pred for p in old_preds], [p.pred for p in new_preds])
    return {"acc": m["acc_new"], "acc_old": m["acc_old"], "nfr": m["nfr"], "pfr": m["pfr"], "nfr_mc": m["nfr_mc"]}


def _choose_epoch(history: list[dict[str, Any]], selection: str, kind: str) -> int:
    trained = [h for h in history if h["epoch"] >= 1]
    if selection == "loss":
        return min(trained, key=lambda h: (h["val"]["loss"], h["epoch"]))["epoch"]
    flip = "nfr_smooth" if kind == "generative" else "nfr"
    gain = "score" if kind == "generative" else "acc"
    return min(trained, key=lambda h: (h["val"][flip], -h["val"][gain], h["epoch"]))["epoch"]


def train(config: TrainConfig) -> dict[str, Any]:
    """Run finetune / MUSCLE training end to end; returns the muscle_training.json content."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from muscle.loss import muscle_loss, select_targets
    from muscle.teachers import teacher_logits
    from pytest_modelcompat.progress import make_progress

    _check_config(config)
    task = _find_task(config)
    output, work = Path(config.output), work_dir(config.output)
    accelerator = Accelerator(cpu=config.device == "cpu",
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    device = accelerator.device
    device_name = str(device) if device.type == "cuda" else device.type  # multi-CPU ranks report "cpu:0"
    set_seed(config.seed)
    main = accelerator.is_main_process
    if main and not config.resume:
        shutil.rmtree(work, ignore_errors=True)  # a fresh run never mixes in an older run's checkpoints
    accelerator.wait_for_everyone()

    train_inst, val_inst = split_train_val(_instances(task, config), config.seed)
    model, tokenizer, base = _student(config, device_name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_ex = build_examples(tokenizer, task, train_inst, config.max_length)
    val_ex = build_examples(tokenizer, task, val_inst, config.max_length, start_index=len(train_ex))
    predicts = config.mode == "train" or task.kind == "multiple_choice"

    progress = make_progress(disable=not main)
    progress.start()
    try:
        old_model = old_preds = stores = None
        if config.mode == "train":
            from pytest_modelcompat.stack import load_stack

            old = load_stack(config.old_adapter, config.old_base, device=device_name, dtype=config.dtype,
                             allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
            old_preds = _val_predictions(old.model, old.tokenizer, task, val_inst, base=old.base,
                                         label="M1", device=device, batch_size=config.batch_size)
            old_model = old.model
            if config.precompute_teachers:
                stores = _teacher_stores(config, work, accelerator, old_model, model, train_ex + val_ex,
                                         pad_id, progress)
                del old, old_model
                old_model = None
                import gc

                gc.collect()
                model.delete_adapter(NEW_TEACHER)

        def batch_loss(student_model, batch) -> tuple[torch.Tensor, dict[str, float]]:
            logits = student_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            student, targets, sequence = select_targets(logits, batch["labels"])
            if config.mode == "finetune":
                ce = torch.nn.functional.cross_entropy(student.float(), targets)
                return ce, {"loss": ce.item()}
            if stores:
                m1, m2 = (s.batch(batch["index"], device) for s in stores)
            else:
                m1 = select_targets(teacher_logits(old_model, batch), batch["labels"])[0]
                m2 = select_targets(teacher_logits(accelerator.unwrap_model(student_model), batch, NEW_TEACHER),
                                    batch["labels"])[0]
            return muscle_loss(student.float(), targets, sequence, m1, m2, mask=config.mask,
                               temperature=config.temperature, ce_weight=config.ce_weight)

        collate_fn = lambda examples: collate(examples, pad_id)  # noqa: E731
        train_loader = DataLoader(train_ex, batch_size=config.batch_size, shuffle=True, collate_fn=collate_fn)
        val_loader = DataLoader(val_ex, batch_size=config.batch_size, shuffle=False, collate_fn=collate_fn)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(train_loader) * config.epochs)
        model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
        state = _Progress()
        accelerator.register_for_checkpointing(state)
        _adapter_checkpointing(accelerator, set_peft_model_state_dict, load_file)

        def validate(epoch: int) -> dict[str, Any]:
            student_model = accelerator.unwrap_model(model)
            student_model.eval()
            losses, weights = [], []
            with torch.no_grad():
                for batch in val_loader:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    losses.append(batch_loss(student_model, batch)[0].item())
                    weights.append(int((batch["labels"][:, 1:] != -100).sum()))
            student_model.train()
            val = {"loss": sum(v * w for v, w in zip(losses, weights, strict=True)) / sum(weights)}
            if predicts:
                preds = _val_predictions(student_model, tokenizer, task, val_inst, base=base,
                                         label=f"epoch-{epoch}", device=device, batch_size=config.batch_size)
                val |= _prediction_metrics(task, old_preds, preds)
            return val

        latest = _latest_checkpoint(work) if config.resume else None
        if latest is not None:
            accelerator.load_state(str(latest))
        else:
            state.history = [{"epoch": 0, "val": validate(0)}]
        step_times: list[float] = []
        for epoch in range(state.epoch + 1, config.epochs + 1):
            train_loader.set_epoch(epoch)
            model.train()
            bar = progress.add_task(f"epoch {epoch}/{config.epochs}", total=len(train_loader))
            sums: dict[str, float] = {}
            for batch in train_loader:
                start = time.perf_counter()
                loss, stats = batch_loss(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step_times.append(time.perf_counter() - start)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                progress.update(bar, advance=1, description=f"epoch {epoch}/{config.epochs} loss {stats['loss']:.4f}")
            train_stats = {key: value / len(train_loader) for key, value in sums.items()}
            state.epoch = epoch
            state.history.append({"epoch": epoch, "train": train_stats, "val": validate(epoch)})
            _save_checkpoint(accelerator, work / f"epoch-{epoch}", broadcast_object_list)
    finally:
        progress.stop()

    chosen = _choose_epoch(state.history, config.selection(), task.kind)
    record = {
        "config": asdict(config),
        "task": {"name": task.name, "kind": task.kind, "n_train": len(train_ex), "n_val": len(val_ex)},
        "teachers": None if config.mode == "finetune" else ("precomputed" if stores else "resident"),
        "epochs": state.history,
        "chosen_epoch": chosen,
        "selection": config.selection(),
        "step_time_s": statistics.median(step_times) if step_times else None,
        "peak_rss_mb": _peak_rss_mb(),
        "num_processes": accelerator.num_processes,
    }
    accelerator.wait_for_everyone()
    if main:
        with atomic_directory(output) as tmp:
            for item in (work / f"epoch-{chosen}" / "adapter").iterdir():
                shutil.copy2(item, tmp / item.name)
            atomic_write(tmp / TRAINING_JSON, json.dumps(record, indent=1) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return record


def _instances(task, config: TrainConfig):
    from pytest_modelcompat.suite import load_instances

    return load_instances(task, split="train", limit=config.limit)


def _teacher_stores(config, work: Path, accelerator, old_model, student_model, examples, pad_id, progress):
    """Both teachers' top-k files (computed by the main process, reused on resume)."""
    from muscle.teachers import TeacherStore, precompute

    paths = (work / "teacher-m1.safetensors", work / "teacher-m2.safetensors")
    if accelerator.is_main_process:
        for path, model, adapter in zip(paths, (old_model, student_model), (None, NEW_TEACHER), strict=True):
            if not (config.resume and path.exists()):
                precompute(model, examples, path, k=config.top_k, batch_size=config.batch_size, pad_id=pad_id,
                           device=accelerator.device, adapter=adapter, progress=progress)
    accelerator.wait_for_everyone()
    return tuple(TeacherStore(path) for path in paths)


def _adapter_checkpointing(accelerator, set_peft_model_state_dict, load_file) -> None:
    """Checkpoint only the student adapter (safetensors), not the frozen base weights."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            accelerator.unwrap_model(models[0]).save_pretrained(Path(output_dir) / "adapter",
                                                                selected_adapters=[STUDENT])
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
