"""muscle: train MUSCLE compatibility adapters (and plain task adapters) for pytest-modelcompat."""
