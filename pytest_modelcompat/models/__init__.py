"""Models: a base model plus a PEFT adapter, loaded as a :class:`~pytest_modelcompat.models.stack.Stack`.

- ``devices.py``: the devices and dtypes offered, and their defaults;
- ``adapters.py``: reading, checking and attaching a PEFT adapter;
- ``gguf.py``: a ``.gguf`` base converted once to a cached safetensors dir;
- ``fingerprints.py``: what identifies an adapter, a base and a stack (the result cache's key);
- ``bases.py``: which base a stack is built on, where it is loaded from, and loading it;
- ``stack.py``: the stack itself — loaded, fingerprinted without loading, checked before loading.

Imports go one way: ``stack → bases → gguf → fingerprints → adapters``, ``bases → devices``.
Nothing here imports torch, transformers or PEFT at import time.
"""
