"""Scoring: a stack and a task → predictions, and two stacks' predictions → a verdict.

- ``engine.py``: batched log-likelihoods (packed choice trees) and greedy generation;
- ``evaluate.py``: predictions per kind (cached), flip metrics, margins and the gate of one task.
"""
