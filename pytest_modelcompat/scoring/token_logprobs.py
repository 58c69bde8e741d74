"""Token log-probabilities from a logits matrix, with a backward pass that keeps one [rows, vocab] copy.

``token_logprobs(logits, rows, tokens)[i] = logits[rows[i], tokens[i]] − logsumexp(logits[rows[i]])``:
the log-probability of each scored token at the position that predicts it. A row may predict several
scored tokens (in a token tree, the context's last position predicts every choice's first token).

The value is the plain expression, computed the same way in training and scoring, so what the trainer
optimises is bit for bit what the gate measures. What differs is the backward: autograd over the plain
expression builds several [rows, vocab] temporaries (the log-normaliser's ``exp(logits − lse)`` and its
product with the gradient, the gather's scattered zeros, their sum) beside the logits it keeps. With
Gemma-3's 262k-token vocabulary each copy is ~1 MB per scored position, ~0.7 GB for a batch of 16 PIQA
instances. Here the backward writes the gradient into one tensor,
``∂/∂logits[r] = Σ_{i: rows_i = r} g_i·(onehot(tokens_i) − softmax(logits[r]))``, a block of rows at a
time, so the softmax never exists for more than ``BLOCK_ROWS`` rows at once.
"""

from __future__ import annotations

import torch

# Rows of the softmax the backward materialises at once: 64 × 262k fp32 = 67 MB on Gemma-3.
BLOCK_ROWS = 64


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        log_norm = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, log_norm, rows, tokens)
        return logits[rows, tokens] - log_norm[rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, log_norm, rows, tokens = ctx.saved_tensors
        grad_logits = torch.zeros_like(logits)
        grad_logits.index_put_((rows, tokens), grad.to(logits.dtype), accumulate=True)
        # Σ_i g_i over the scored tokens each row predicts: the weight of that row's softmax.
        row_weight = torch.zeros_like(log_norm).index_add_(0, rows, grad.to(log_norm.dtype))
        for start in range(0, logits.shape[0], BLOCK_ROWS):
            block = slice(start, start + BLOCK_ROWS)
            softmax = (logits[block] - log_norm[block, None]).exp_()
            grad_logits[block] -= softmax.mul_(row_weight[block, None])
        return grad_logits, None, None


def token_logprobs(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[N] log p(tokens[i] | position rows[i]) from ``logits`` [R, V] (module docstring)."""
    return _TokenLogprobs.apply(logits, rows, tokens)
