"""Scoring engine: batched continuation log-likelihoods and batched greedy generation.

Log-likelihoods are tokenised exactly like lm-eval 0.4.13's ``HFLM`` (``LM._encode_pair`` and
``HFLM._loglikelihood_tokens``), so predictions agree with lm-eval on the same model and prompt:

- trailing whitespace of the context moves to the front of the continuation;
- ``whole = enc(context + continuation)``, ``context_enc = enc(context)`` and the continuation
  tokens are ``whole[len(context_enc):]``; the model input is ``context_enc + continuation_enc``;
- ``enc`` adds special tokens as the tokenizer decides, except when the text already starts with
  the prefix token (BOS, else EOS); an empty context becomes that prefix token;
- a context + continuation longer than the model's maximum length + 1 is cut from the left.

What makes it faster than lm-eval, which runs context + continuation once per choice and takes a
``log_softmax`` over the whole ``[batch, sequence, vocab]`` tensor:

- **one packed row per context** (a token tree): the context tokens once, then the choices'
  continuation tokens (all but the last, as in lm-eval) as a trie, so leading tokens that choices
  share are computed once too. A 4D attention mask lets each trie token see the context and its
  own ancestors only, and position ids continue from the end of the context by depth, so every
  choice is computed exactly as the lone sequence lm-eval runs would be;
- the LM head runs only on positions whose next token is scored (``logits_to_keep`` as a
  boolean mask): the context's last position (shared by all choices) and the trie tokens;
- rows are sorted by length and batched with rows of the same padded width (below).

**Batch invariance.** A row's scores must not depend on which rows share its batch, or a flip
gate flips on arithmetic (lm-eval's scores move with batch size: lm-eval issue #3055). Rows are
independent in every op, but the kernels' reductions over the sequence (attention softmax and
its weighted sum over keys) round differently when the padded width changes, by an ulp or so of
the summed log-likelihood (1.5e-5 at -106 on SmolLM2, fp32 CPU). So every row is padded to a width
that depends on its own length only (:func:`padded_width`, at most 1/8 more than its length), and
a batch only holds rows of one width: batch size and instance order then change nothing (bit for
bit in fp32 on CPU; ``tests/test_batch_invariance.py``). Greedy generation does the same with its
left padding. With bfloat16/float16 or on CUDA, kernels chosen by batch shape (cuBLAS split-K,
fused attention) may still round differently: invariant only to within fp tolerance there.

A single forward with a tree mask was chosen over "run the context, expand its KV cache over the
choices, run the choices": it is one call instead of two, needs no cache copies, and keeps the
model's own forward (LoRA layers, final norm, logit soft-capping) untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_modelcompat.errors import CompatInputError
from pytest_modelcompat.progress import progress_advancer

if TYPE_CHECKING:
    import torch

    from pytest_modelcompat.models.stack import Stack

Request = tuple[str, Sequence[str]]
# The fewest rows the LM head's product gets (see _forward_trees): below it BLAS may switch kernels.
MIN_HEAD_ROWS = 16


# ---------------------------------------------------------------------------------------------
# lm-eval-identical tokenisation


def _prefix_token_id(tokenizer) -> int:
    # HFLM.prefix_token_id: the token an empty context stands for.
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """``HFLM.tok_encode``: special tokens as the tokenizer decides, unless the text starts with
    the prefix (BOS) token already."""
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and text.startswith(tokenizer.decode(_prefix_token_id(tokenizer))):
        kwargs = {"add_special_tokens": False}
    return tokenizer.encode(text, **kwargs)


def encode_request(tokenizer, context: str, continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(context tokens, continuation tokens) per continuation, as ``LM.loglikelihood`` does it."""
    if context == "":
        prefix = _prefix_token_id(tokenizer)
        pairs = []
        for continuation in continuations:
            tokens = encode(tokenizer, continuation, add_special_tokens=False)
            pairs.append((tokens[:1], tokens[1:]) if tokens[:1] == [prefix] else ([prefix], tokens))
        return pairs
    n_spaces = len(context) - len(context.rstrip())
    moved = context[len(context) - n_spaces:] if n_spaces else ""
    context = context[: len(context) - n_spaces]
    context_enc = encode(tokenizer, context)
    return [(context_enc, encode(tokenizer, context + moved + c)[len(context_enc):]) for c in continuations]


def pad_token_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its EOS (padding is never attended)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def max_length(model, tokenizer) -> int:
    """The model's maximum sequence length, resolved exactly as HFLM resolves it."""
    return _config_max_length(model.config, tokenizer)


def _config_max_length(config, tokenizer) -> int:
    from lm_eval.models.utils import DEFAULT_MAX_LENGTH, resolve_max_length

    return resolve_max_length(config, tokenizer, default=DEFAULT_MAX_LENGTH)


# ---------------------------------------------------------------------------------------------
# packed token trees


@dataclass
class _Tree:
    """One packed row: a shared prefix, then the continuations (all but their last token) as a
    token trie, so choices that start alike ("... a spoon" / "... a fork") share their common
    leading tokens as well as the prefix."""

    prefix: list[int]
    tokens: list[int] = field(default_factory=list)  # trie nodes, each after its parent
    parents: list[int] = field(default_factory=list)  # parent node index, -1 = the prefix's end
    depths: list[int] = field(default_factory=list)  # 0-based distance from the prefix
    children: dict[tuple[int, int], int] = field(default_factory=dict)  # (parent, token) -> node
    targets: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (slot, continuation, path)

    def add(self, slot: int, continuation: list[int]) -> None:
        node, path = -1, []
        for token in continuation[:-1]:
            child = self.children.get((node, token))
            if child is None:
                child = len(self.tokens)
                self.children[(node, token)] = child
                self.tokens.append(token)
                self.parents.append(node)
                self.depths.append(self.depths[node] + 1 if node >= 0 else 0)
            node = child
            path.append(node)
        self.targets.append((slot, continuation, path))

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.tokens)


def _build_trees(tokenizer, requests: Sequence[Request], limit: int) -> tuple[list[_Tree], list[int]]:
    """Group every (request, choice) into trees; return the trees and each request's first slot."""
    trees: list[_Tree] = []
    first_slot = []
    slot = 0
    for context, continuations in requests:
        first_slot.append(slot)
        by_prefix: dict[tuple[int, ...], _Tree] = {}
        for context_enc, continuation_enc in encode_request(tokenizer, context, continuations):
            if not continuation_enc:
                raise CompatInputError(
                    f"a choice/target after context {context[-40:]!r} is empty: give every choice some text"
                )
            if len(continuation_enc) > limit:
                raise CompatInputError(
                    f"a choice/target is {len(continuation_enc)} tokens, longer than the model's "
                    f"maximum length {limit}: shorten it"
                )
            # lm-eval's input: (context + continuation)[-(max_length + 1):][:-1]; the prefix is
            # everything up to the position that predicts the continuation's first token.
            whole = (context_enc + continuation_enc)[-(limit + 1):][:-1]
            prefix = whole[: len(whole) - (len(continuation_enc) - 1)]
            by_prefix.setdefault(tuple(prefix), _Tree(prefix)).add(slot, continuation_enc)
            slot += 1
        trees.extend(by_prefix.values())
    first_slot.append(slot)
    return trees, first_slot


def _attention_mask(config, allowed: torch.Tensor, position_ids: torch.Tensor, dtype, device):
    """The additive 4D mask for ``allowed`` [rows, q, kv]; with sliding-window attention also the
    windowed mask (distance in positions < window), per layer type when the model mixes both.

    A custom 4D mask replaces the model's own mask building, so the window must be applied here.
    """
    import torch

    def additive(allowed_rows):
        mask = torch.zeros(allowed_rows.shape[0], 1, *allowed_rows.shape[1:], dtype=dtype)
        return mask.masked_fill_(~allowed_rows[:, None], torch.finfo(dtype).min).to(device)

    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types is not None and "sliding_attention" not in layer_types):
        return additive(allowed)
    windowed = allowed & ((position_ids[:, :, None] - position_ids[:, None, :]) < window)
    if layer_types is None:
        return additive(windowed)
    return {"full_attention": additive(allowed), "sliding_attention": additive(windowed)}


def padded_width(length: int) -> int:
    """The width a row of ``length`` tokens is padded to: a function of the row alone (so its
    scores never depend on its batch-mates), a multiple of 16, and at most 1/8 above ``length``
    beyond 128 tokens (step 2**(bit_length - 4))."""
    step = max(16, 1 << max(0, length.bit_length() - 4))
    return -(-length // step) * step


def same_width_batches(items: Sequence[Any], lengths: Sequence[int], batch_size: int) -> list[list[Any]]:
    """``items`` (sorted by length, longest first) cut into batches of at most ``batch_size`` whose
    members all share one :func:`padded_width`."""
    batches: list[list[Any]] = []
    width = None
    for item, length in zip(items, lengths):
        if not batches or len(batches[-1]) == batch_size or padded_width(length) != width:
            batches.append([])
            width = padded_width(length)
        batches[-1].append(item)
    return batches


def pack_rows(lengths: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Trees of these lengths laid out several to a row: rows of (tree index, offset), first fit in
    order of decreasing length, each row at most as long as the longest tree. Training batches mix
    short and long instances, and one tree per row padded to the longest spent over half of a PIQA
    batch's positions on padding."""
    width = max(lengths)
    rows: list[list[tuple[int, int]]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, u in enumerate(used) if u + lengths[i] <= width), None)
        if r is None:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append((i, used[r]))
        used[r] += lengths[i]
    return rows


def _forward_trees(model, trees: Sequence[_Tree], pad_id: int, device, dtype,
                   config=None, width: int | None = None, pack: bool = False) -> tuple[list[int], torch.Tensor]:
    """Score one batch of trees; return (choice slots, summed continuation log-probs).

    ``config`` is the model's config when ``model`` is a wrapper without one (DDP in training);
    ``width``: pad the rows to it (default: the longest tree); ``pack``: several trees to a row
    (:func:`pack_rows`; each still sees only itself, at its own positions) instead of one.
    """
    import torch

    from pytest_modelcompat.scoring.token_logprobs import token_logprobs

    layout = (pack_rows([tree.length for tree in trees]) if pack
              else [[(i, 0)] for i in range(len(trees))])
    width = max(width or 0, max(tree.length for tree in trees))
    rows = len(layout)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    keep = torch.zeros((rows, width), dtype=torch.bool)
    # Token i sees token j iff both are in one tree and j is in its prefix and no later than i, or j
    # is i or an ancestor of i in the trie. Padding sees itself (a row never sees nothing), and in a
    # row of one tree its prefix too: what it saw before packing, so the gate's scores stay bit for bit.
    allowed = torch.eye(width, dtype=torch.bool).repeat(rows, 1, 1)
    # Per scored token: (row, column of the position predicting it, token id, choice slot).
    scored_row, scored_col, scored_tok, scored_slot = [], [], [], []
    for r, row in enumerate(layout):
        for i, o in row:
            tree = trees[i]
            p, n = len(tree.prefix), len(tree.tokens)
            input_ids[r, o:o + p] = torch.tensor(tree.prefix)
            input_ids[r, o + p:o + p + n] = torch.tensor(tree.tokens, dtype=torch.long)
            position_ids[r, o:o + p] = torch.arange(p)
            position_ids[r, o + p:o + p + n] = p + torch.tensor(tree.depths, dtype=torch.long)
            keep[r, o + p - 1:o + p + n] = True
            block = torch.ones(p + n, p + n, dtype=torch.bool).tril()
            trie = torch.eye(n, dtype=torch.bool)
            for node, parent in enumerate(tree.parents):
                if parent >= 0:
                    trie[node] |= trie[parent]  # parents come first, so their rows are complete
            block[p:, p:] = trie
            allowed[r, o:o + p + n, o:o + p + n] = block
            if len(row) == 1:
                allowed[r, o + p + n:, o:o + p] = True
            for slot, continuation, path in tree.targets:
                scored_row += [r] * len(continuation)
                scored_col += [o + p - 1, *(o + p + node for node in path)]
                scored_tok += continuation
                scored_slot += [slot] * len(continuation)
    mask = _attention_mask(config or model.config, allowed, position_ids, dtype, device)
    # The LM head is one (kept positions × hidden) @ (hidden × vocab) product; BLAS may take another
    # kernel for a product of few rows, and round differently (measured on an AVX-512/AMX Xeon: up
    # to 3.6e-6 per logit below 16 rows, 0 from 16 on). So it always gets at least MIN_HEAD_ROWS
    # rows: spare positions are kept and their logits ignored, and a row's scores do not depend on
    # how many positions its batch scores.
    spare = (~keep).flatten().nonzero()[: max(0, MIN_HEAD_ROWS - int(keep.sum())), 0]
    keep.view(-1)[spare] = True

    # Map (row, column) of every kept position to its index in the flattened kept logits.
    flat_index = torch.cumsum(keep.flatten(), 0).view(rows, width) - 1
    src = flat_index[torch.tensor(scored_row), torch.tensor(scored_col)].to(device)
    logits = model(
        input_ids=input_ids.to(device), attention_mask=mask,
        position_ids=position_ids.to(device), logits_to_keep=keep.to(device), use_cache=False,
    ).logits.float()
    scored_logprobs = token_logprobs(logits, src, torch.tensor(scored_tok, device=device))
    slots = sorted(set(scored_slot))
    slot_index = {s: i for i, s in enumerate(slots)}
    owner = torch.tensor([slot_index[s] for s in scored_slot], device=device)
    sums = torch.zeros(len(slots), device=device).index_add_(0, owner, scored_logprobs)
    return slots, sums


def loglikelihoods(
    stack: Stack, requests: Sequence[Request], *, batch_size: int = 16, progress: Any = None,
    description: str = "log-likelihoods",
) -> list[list[float]]:
    """For each ``(context, continuations)`` the summed log-prob of every continuation.

    Continuations already carry the delimiter (``" " + choice``). ``batch_size`` counts packed
    rows (one per context) per forward pass; neither it nor the order of ``requests`` changes the
    results (rows of one padded width per batch: module docstring, "Batch invariance").
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, tokenizer = stack.model, stack.tokenizer
    trees, first_slot = _build_trees(tokenizer, requests, max_length(model, tokenizer))
    # Longest first: the first batch is the biggest, so memory problems show at once.
    trees.sort(key=lambda tree: -tree.length)
    pad_id = pad_token_id(tokenizer)
    dtype = next(model.parameters()).dtype
    values = [0.0] * first_slot[-1]
    advance = progress_advancer(progress, description, len(trees))
    with torch.inference_mode():
        for batch in same_width_batches(trees, [tree.length for tree in trees], batch_size):
            width = padded_width(batch[0].length)
            slots, sums = _forward_trees(model, batch, pad_id, stack.device, dtype, width=width)
            for slot, value in zip(slots, sums.tolist()):
                values[slot] = value
            advance(len(batch))
    return [values[first_slot[i]: first_slot[i + 1]] for i in range(len(requests))]


def packed_choice_loglikelihoods(model, tokenizer, requests: Sequence[Request], *, device,
                                 config=None) -> list[torch.Tensor]:
    """The training form of :func:`loglikelihoods`: all requests in one packed forward, with
    gradients (no inference mode), one tensor of choice log-likelihoods per request.

    The same trees, tokenisation, masks and positions as the gate's scoring, so what the trainer
    optimises is what the gate measures; the trees are laid several to a row (:func:`pack_rows`),
    each seeing only itself, since a training batch has no batch invariance to keep and padding
    every tree to the longest was most of a PIQA step's positions. ``config``: the model's config when ``model``
    is a training wrapper (DDP) that has none.
    """
    config = config or model.config
    trees, first_slot = _build_trees(tokenizer, requests, _config_max_length(config, tokenizer))
    pad_id = pad_token_id(tokenizer)
    dtype = next(model.parameters()).dtype
    # Every slot has ≥ 1 scored token and _forward_trees returns them sorted: sums[slot] is that slot's.
    _, sums = _forward_trees(model, trees, pad_id, device, dtype, config=config, pack=True)
    return [sums[first_slot[i]: first_slot[i + 1]] for i in range(len(requests))]


# ---------------------------------------------------------------------------------------------
# generation


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def generate(
    stack: Stack, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str],
    batch_size: int = 8, no_repeat_ngram_size: int = 0, progress: Any = None,
    description: str = "generating",
) -> list[str]:
    """Greedy continuations of ``prompts`` (text only, cut at the first stop string).

    Prompts are encoded like lm-eval's ``generate_until`` (same special-token rule as
    log-likelihoods, left-truncated to leave room for ``max_new_tokens``), sorted by length and
    left-padded to :func:`padded_width` of their own length, a batch holding prompts of one width
    only, so batch size and prompt order do not change the text. A sequence stops at EOS or once it
    contains a stop string.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, tokenizer = stack.model, stack.tokenizer
    room = max(1, max_length(model, tokenizer) - max_new_tokens)
    encoded = [encode(tokenizer, prompt)[-room:] for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad_id = pad_token_id(tokenizer)
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    stop = [s for s in stop if s]
    texts: list[str] = [""] * len(prompts)
    advance = progress_advancer(progress, description, len(prompts))
    with torch.inference_mode():
        for chunk in same_width_batches(order, [len(encoded[i]) for i in order], batch_size):
            width = padded_width(len(encoded[chunk[0]]))
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                input_ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i], dtype=torch.long)
                attention_mask[r, width - len(encoded[i]):] = 1
            output = model.generate(
                input_ids=input_ids.to(stack.device), attention_mask=attention_mask.to(stack.device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                no_repeat_ngram_size=no_repeat_ngram_size, stop_strings=stop or None,
                tokenizer=tokenizer, pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                temperature=None, top_p=None, top_k=None,
            )
            for r, i in enumerate(chunk):
                text = tokenizer.decode(output[r, width:], skip_special_tokens=True)
                texts[i] = truncate_at_stop(text, stop)
            advance(len(chunk))
    return texts
