from __future__ import annotations

import json
import multiprocessing

import pytest

from pytest_modelcompat.cache import ResultCache, cache_home

STACK = "a" * 64
TASK = "b" * 64


def test_roundtrip_returns_only_requested_present_ids(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put_many(STACK, TASK, {"0": {"pred": 1, "logliks": [-1.5, -0.25]}, "1": {"pred": 0}})
    assert cache.get_many(STACK, TASK, ["0", "2"]) == {"0": {"pred": 1, "logliks": [-1.5, -0.25]}}
    assert cache.get_many(STACK, "c" * 64, ["0"]) == {}
    assert cache.get_many("d" * 64, TASK, ["0"]) == {}


def test_put_merges_with_existing_entries_and_overwrites_same_id(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put_many(STACK, TASK, {"0": {"pred": 1}, "1": {"pred": 2}})
    cache.put_many(STACK, TASK, {"1": {"pred": 3}, "2": {"pred": 4}})
    assert cache.get_many(STACK, TASK, ["0", "1", "2"]) == {
        "0": {"pred": 1}, "1": {"pred": 3}, "2": {"pred": 4},
    }


def test_floats_survive_exactly(tmp_path):
    cache = ResultCache(tmp_path)
    value = -12.345678901234567
    cache.put_many(STACK, TASK, {"x": {"ll": value, "tuple": (1, 2), "nested": {3: "k"}}})
    assert cache.get_many(STACK, TASK, ["x"]) == {"x": {"ll": value, "tuple": [1, 2], "nested": {"3": "k"}}}


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],                       # truncated write
        lambda text: "",                                            # empty file
        lambda text: "\x00\xff garbage",                            # not JSON
        lambda text: text.replace('"pred":1', '"pred":7'),          # entries edited, checksum stale
        lambda text: text.replace('"schema_version":1', '"schema_version":99'),
        lambda text: json.dumps([1, 2, 3]),                         # valid JSON, wrong shape
    ],
    ids=["truncated", "empty", "garbage", "tampered", "future-schema", "wrong-shape"],
)
def test_corrupt_file_is_a_miss_and_is_overwritten(tmp_path, damage):
    cache = ResultCache(tmp_path)
    cache.put_many(STACK, TASK, {"0": {"pred": 1}})
    path = cache.path(STACK, TASK)
    path.write_text(damage(path.read_text()))
    assert cache.get_many(STACK, TASK, ["0"]) == {}
    cache.put_many(STACK, TASK, {"1": {"pred": 2}})
    assert cache.get_many(STACK, TASK, ["0", "1"]) == {"1": {"pred": 2}}


def test_file_filed_under_other_fingerprints_is_not_trusted(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put_many(STACK, TASK, {"0": {"pred": 1}})
    other = cache.path("e" * 64, TASK)
    other.parent.mkdir(parents=True)
    other.write_bytes(cache.path(STACK, TASK).read_bytes())
    assert cache.get_many("e" * 64, TASK, ["0"]) == {}


def test_fingerprints_that_are_not_safe_path_components_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a fingerprint"):
        ResultCache(tmp_path).get_many("../escape", TASK, ["0"])


def test_cache_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELCOMPAT_HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home"
    monkeypatch.delenv("MODELCOMPAT_HOME")
    assert cache_home().name == "pytest-modelcompat"


def _writer(root: str, worker: int, rounds: int) -> None:
    cache = ResultCache(root)
    for i in range(rounds):
        # Each worker writes its own ids and also the shared id "common-i" (same value from both).
        cache.put_many(STACK, TASK, {f"w{worker}-{i}": {"worker": worker, "i": i}, f"common-{i}": {"i": i}})
        cache.put_many(STACK, f"{worker}" * 64, {str(i): {"i": i}})


def test_concurrent_writers_from_two_processes_keep_every_entry(tmp_path):
    rounds = 25
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), worker, rounds)) for worker in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    cache = ResultCache(tmp_path)
    expected_ids = [f"w{w}-{i}" for w in (1, 2) for i in range(rounds)] + [f"common-{i}" for i in range(rounds)]
    shared = cache.get_many(STACK, TASK, expected_ids)
    assert sorted(shared) == sorted(expected_ids)
    assert shared["w2-7"] == {"worker": 2, "i": 7}
    for worker in (1, 2):
        own = cache.get_many(STACK, f"{worker}" * 64, [str(i) for i in range(rounds)])
        assert len(own) == rounds
    assert not list(tmp_path.rglob("*.tmp")), "no temp files left behind"
