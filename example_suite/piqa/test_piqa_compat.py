"""The PIQA gate from Python: the marker and the ``compat`` fixture on the task of compat_piqa.yaml.

Run with the stacks to compare, e.g. (see muscle/demo.py for how the bases are built):

    pytest example_suite/piqa --old-adapter example_suite/artifacts/piqa_a1 --old-base V1 \
        --new-adapter example_suite/artifacts/piqa_a2 --new-base V2 --compat-limit 300

Both tests reuse the predictions the YAML item computed (the result cache is keyed by stack and task).
"""

import pytest


@pytest.mark.modelcompat(task="piqa", suite="compat_piqa.yaml")
def test_update_keeps_old_successes_and_accuracy(compat):
    # The marker evaluates the task first and asserts the suite's gate (max_nfr) after this body;
    # the body adds what this team also cares about: no accuracy regression beyond 2.5 points.
    compat.report.assert_no_accuracy_drop(tolerance=0.025)


def test_most_old_successes_survive(compat):
    report = compat.evaluate("piqa", suite="compat_piqa.yaml")
    # BTC: of the instances the deployed stack answered right, the share the new one still does.
    report.assert_btc_above(0.9)
