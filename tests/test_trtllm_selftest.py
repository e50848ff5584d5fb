"""scripts/trtllm_selftest.py: its dry run (everything that needs no TensorRT-LLM) runs here, its
cases cover what docs/trtllm.md says they cover, the summary line reads as documented, and the full
self-test runs where TensorRT-LLM 1.2.1 and a GPU are present (skipped with the reason elsewhere;
without TensorRT-LLM it stops with one line)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from helpers import REPO

from pt_trtllm import plugin_lib
from pt_trtllm.merge import MERGE_IMPLS

HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


@pytest.fixture(scope="module")
def selftest():
    spec = importlib.util.spec_from_file_location("trtllm_selftest", REPO / "scripts" / "trtllm_selftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_cases_cover_qk_norm_each_merge_impl_both_schedules_and_one_track(selftest):
    cases = selftest.CASES
    assert {c.merge_impl for c in cases} == set(MERGE_IMPLS)
    plugin = [c for c in cases if c.merge_impl == "pt_plugin"]  # the PTTrackMerge engines: both schedules,
    assert {c.schedule for c in plugin} == {"block", "sublayer"}  # with and without QK-norm, with track norms
    assert {bool(c.overrides.get("qk_norm")) for c in plugin} == {False, True}
    assert any(c.overrides.get("track_dispatch_norm") for c in plugin)
    for qk_norm in (False, True):
        for schedule in ("block", "sublayer"):
            for impl in ("allreduce", "allreduce_fused_norm"):
                assert any(bool(c.overrides.get("qk_norm")) == qk_norm and (c.schedule, c.merge_impl) == (schedule, impl)
                           for c in cases), (qk_norm, schedule, impl)
    assert any(c.overrides.get("num_tracks") == 1 for c in cases)
    assert any(c.overrides.get("track_dispatch_norm") for c in cases)
    names = {c.name: c for c in cases}
    for c in cases:  # a QK-norm case is timed against the same case without QK-norm
        if c.speed_baseline:
            base = names[c.speed_baseline]
            assert c.overrides.get("qk_norm") and not base.overrides.get("qk_norm")
            assert (base.schedule, base.merge_impl) == (c.schedule, c.merge_impl)


def test_dry_run_computes_the_references_and_prints_the_summary(selftest, tmp_path, capsys):
    assert selftest.main(["--dry_run", "--work_dir", str(tmp_path), "--output_json", str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(selftest.CASES) + 1
    n = len(selftest.CASES)
    assert lines[-1].startswith(f"SUMMARY pt_trtllm-selftest result=DRY_RUN cases={n} converts={n}/{n} ")
    assert "tensorrt_llm=" in lines[-1] and "torch=" in lines[-1]
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["summary"] == lines[-1]
    for case in selftest.CASES:
        numbers = record["cases"][case.name]["numbers"]
        assert 0 < numbers["bf16_logit_diff"] < 1  # bf16 differs from fp32, a little
        assert numbers["tolerance"] == pytest.approx(3 * numbers["bf16_logit_diff"] + 0.02)
        assert record["cases"][case.name]["checks"] == {"converts": True}
        assert (tmp_path / case.name / "ckpt" / "rank0.safetensors").is_file()


def test_the_summary_of_a_full_run(selftest):
    """What the full run prints, from its results: per-check counts, PASS only if every check
    passed, and the QK-norm decode cost over the same cases without QK-norm."""
    cases = {c.name: c for c in selftest.CASES}

    def result(name, tpot, **checks):
        r = selftest.Result(cases[name], 2, 0.2, [])
        r.checks = {"converts": True, "builds": True, "merge_nodes": True, "runs": True, "tokens": True,
                    "logits": True, **checks}
        r.numbers = {"bf16_logit_diff": 0.05, "logit_diff": 0.04, "tpot_ms": tpot}
        return r

    results = {r.case.name: r for r in (result("plain-block-allreduce", 1.0), result("qknorm-block-allreduce", 1.2),
                                         result("plain-block-fused", 2.0), result("qknorm-block-fused", 2.2))}
    line = selftest.summary_line(results, False, {"tensorrt_llm": "1.2.1"})
    assert line.startswith("SUMMARY pt_trtllm-selftest result=PASS cases=4 converts=4/4 builds=4/4 "
                           "merge_nodes=4/4 runs=4/4 tokens=4/4 logits=4/4 ")
    assert "qk_norm_decode_cost=+15.0%" in line and line.endswith("tensorrt_llm=1.2.1")
    results["qknorm-block-fused"].checks["tokens"] = False
    assert " result=FAIL " in selftest.summary_line(results, False, {}) and " tokens=3/4 " in \
        selftest.summary_line(results, False, {})


def test_a_pt_plugin_case_without_the_plugin_library_is_reported_not_run(selftest, tmp_path, monkeypatch):
    """Where libpt_trtllm_plugins.so cannot be found, a pt_plugin case is not built (no build.py
    run, no check) and says why, as a case needing more GPUs does."""
    missing = tmp_path / "nowhere" / plugin_lib.LIBRARY
    monkeypatch.setenv(plugin_lib.ENV_VAR, str(missing))
    monkeypatch.setattr(selftest, "run", lambda *a, **k: pytest.fail("build.py was run"))
    case = next(c for c in selftest.CASES if c.merge_impl == "pt_plugin")
    result = selftest.Result(case, 2, 0.2, [])
    selftest.engine_checks(None, result, tmp_path, gpus=2)
    assert result.checks == {} and result.notes == [f"not run: {plugin_lib.ENV_VAR}={missing} is not a file"]


@pytest.mark.skipif(HAS_TRTLLM, reason="tensorrt_llm is installed: the full self-test runs instead")
def test_the_full_self_test_without_tensorrt_llm_stops_with_one_line(selftest, capsys):
    assert selftest.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorrt_llm==1.2.1" in err and "--dry_run" in err


@pytest.mark.skipif(not HAS_TRTLLM or not torch.cuda.is_available(),
                    reason="the full self-test needs TensorRT-LLM 1.2.1 and a GPU")
def test_the_full_self_test_passes(selftest, tmp_path, capsys):
    assert selftest.main(["--work_dir", str(tmp_path)]) == 0, capsys.readouterr().out
