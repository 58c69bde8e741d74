"""pytest-modelcompat: gate LLM + adapter updates on negative flips.

Kept import-light on purpose: the plugin loads in every pytest run of the environment, so this
package must not import torch, transformers or lm-eval at import time.
"""

from pytest_modelcompat.errors import CompatInputError

__version__ = "0.1.0"
__all__ = ["CompatInputError", "__version__"]
