"""Models: a base model plus a PEFT adapter, loaded as a :class:`~pytest_modelcompat.models.stack.Stack`.

- ``stack.py``: adapter stacks, their loading, fingerprints and pre-load checks.
"""
