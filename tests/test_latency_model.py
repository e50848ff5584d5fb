"""The latency model (pt_trtllm/latency_model.py, scripts/latency_model.py) on a small synthetic input.

Expected values are worked out by hand below (merges x the table's latency + the scaled step), not by the module.
The `tiny` preset: T=2 tracks, L=4 layers, D=2, H=128, 2 KV heads and 16-wide heads per track, FFN 256 per track,
vocab 512. So `block` merges L/D = 2 times per forward and `sublayer` 2L = 8 times; one token's all-reduce message
is 128 x 2 B = 256 B.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from pt_trtllm.latency_model import AllReduceTable, LatencyModel

REPO = Path(__file__).resolve().parent.parent

# Measured on GPU "A" (HBM 2.0 TB/s, 100 TFLOP/s), predicted on "B" (1.0 TB/s, 50 TFLOP/s): every time doubles.
STEPS = {
    "gpu": "A",
    "decode": [
        {"model": "one track of tiny (none schedule: 1 GPU)", "batch": 1, "compile_cuda_graph_step_ms": 1.5},
        {"preset": "tiny", "batch": 4, "context": 64, "compile_cuda_graph_step_ms": 2.0},
        {"model": "one track of a small model", "batch": 1, "compile_cuda_graph_step_ms": 99.0},
    ],
    "prefill": [{"preset": "tiny", "tokens": 8, "eager_ms": 5.0}],
}
PUBLISHED = {
    "allreduce": [
        {"backend": "nccl", "gpus": 2, "nodes": 1, "bytes": 256, "us": 10.0, "source": "test"},
        {"backend": "nccl", "gpus": 2, "nodes": 1, "bytes": 1024, "us": 20.0, "source": "test"},
        {"backend": "oneshot", "gpus": 2, "nodes": 1, "bytes": 256, "us": 1.0, "source": "test"},
    ],
    "busbw_GBps": [{"backend": "nccl", "gpus": 2, "nodes": 1, "GBps": 1.0, "source": "test"}],
    "gpus": {"A": {"hbm_TBps": 2.0, "bf16_dense_TFLOPs": 100.0, "source": "test"},
             "B": {"hbm_TBps": 1.0, "bf16_dense_TFLOPs": 50.0, "source": "test"}},
    "paper": {"source": "test", "columns": ["dense", "D=2", "D=4", "D=8"],
              "ttft_ms": {"8": [10.0, 10.0, 10.0, 10.0]}, "tpot_ms": {"63/2": [3.0, 3.0, 3.0, 3.0]}},
}


def model(**kw) -> LatencyModel:
    return LatencyModel("tiny", 2, STEPS, PUBLISHED, target="B", **kw)


def test_tpot_is_the_scaled_step_plus_merges_times_the_cited_latency():
    m = model()
    # batch 1 at the measured context 64: 2 x 1.5 ms + merges x 10 us (256 B)
    assert m.tpot_ms("block", 64) == pytest.approx(3.0 + 2 * 0.010)
    assert m.tpot_ms("sublayer", 64) == pytest.approx(3.0 + 8 * 0.010)
    # 1000 more tokens of context: + 1000 x (2 K/V x 2 heads x 16 x 4 layers x 2 B = 512 B) / 1e9 B per ms
    assert m.tpot_ms("block", 1064) == pytest.approx(3.0 + 0.000512 + 2 * 0.010)
    # batch 4: 2 x 2.0 ms + merges x 20 us (4 x 256 = 1024 B); throughput = 4 tokens per TPOT
    assert m.tpot_ms("sublayer", 64, batch=4) == pytest.approx(4.0 + 8 * 0.020)
    assert m.throughput("sublayer", 64, 4) == pytest.approx(4 * 1000 / 4.16)
    assert model(allreduce="oneshot").tpot_ms("sublayer", 64) == pytest.approx(3.0 + 8 * 0.001)


def test_ttft_uses_the_measured_prefill_or_flops_over_peak_and_extrapolates_past_the_table():
    m = model()
    # 8 tokens measured: 5.0 ms x peak ratio 2; message 8 x 256 = 2048 B is past the table's 1024 B:
    # 20 us + (2048 - 1024) B x 2(2-1)/2 / 1 GB/s = 20 + 1.024 us
    assert m.ttft_ms("block", 8) == pytest.approx(10.0 + 2 * 0.021024)
    assert m.ttft_ms("sublayer", 8) == pytest.approx(10.0 + 8 * 0.021024)
    # 4 tokens never measured: FLOPs / 50 TFLOP/s. Per layer: params 128x16x(2x4+2x2) + 3x128x256 = 122880,
    # 2 x 4 x 122880 = 983040, causal attention 2 x 4 x 4 x 4 heads x 16 = 2048; x 4 layers + LM head 2 x 512 x 128
    flops = 4 * (983040 + 2048) + 131072
    # message 4 x 256 = 1024 B -> 20 us
    assert m.ttft_ms("block", 4) == pytest.approx(flops / 5e10 + 2 * 0.020)
    # 2 tokens: 512 B lies between 256 B (10 us) and 1024 B (20 us): 10 + 10 x 256 / 768
    assert m.ttft_ms("sublayer", 2) - m.prefill_ms(2)[0] == pytest.approx(8 * (10 + 10 * 256 / 768) / 1e3)


def test_past_the_table_adds_the_ring_bytes_over_the_cited_bus_bandwidth():
    # 4 GPUs: 1000 B past the table x 2(4-1)/4 = 1500 B at 1 GB/s (1000 B/us) = 1.5 us; below the table: its floor
    table = AllReduceTable("nccl", 4, (100, 200), (5.0, 6.0), 1.0)
    assert table.latency_us(1200) == pytest.approx(6.0 + 1.5)
    assert table.latency_us(10) == 5.0


def _script():
    spec = importlib.util.spec_from_file_location("latency_model_script", REPO / "scripts" / "latency_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path, *args, steps=STEPS, published=PUBLISHED):
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    (tmp_path / "pub.json").write_text(json.dumps(published))
    _script().main(["--steps", str(tmp_path / "steps.json"), "--published", str(tmp_path / "pub.json"),
                    "--target", "B", "--presets", "tiny,tiny,tiny", *args])


def test_cli_prints_the_hand_values_beside_the_paper(tmp_path, capsys):
    _run(tmp_path)
    out = capsys.readouterr().out
    # TPOT row 63/2 -> context 64: sublayer 3.08 vs the paper's 3.00 (+3%), block 3.02 (+1%)
    assert "| 63/2 | 3.08 / 3.00 (+3%) | 3.02 / 3.00 (+1%) |" in out
    assert "| 8 | 10.17 / 10.00 (+2%) | 10.04 / 10.00 (+0%) |" in out
    # the 16-GPU prediction needs a pt-58b-t16-d8-shaped track step, absent here: one line says so
    assert "- skipped: no batch-1 decode step" in out


@pytest.mark.parametrize("args, steps, published, message", [
    (["--presets", "tiny,nope,tiny"], STEPS, PUBLISHED, "unknown preset 'nope'"),
    (["--gpus", "4"], STEPS, PUBLISHED, "N=4 GPUs but preset tiny has T=2 tracks"),
    ([], STEPS, {**PUBLISHED, "busbw_GBps": []}, "nccl at 2 GPUs: no published figure at 2048 B"),
    ([], STEPS, {**PUBLISHED, "allreduce": PUBLISHED["allreduce"][2:]}, "no published all-reduce figures"),
    ([], {**STEPS, "decode": STEPS["decode"][1:]}, PUBLISHED, "no batch-1 decode step"),
    (["--target", "C"], STEPS, PUBLISHED, "GPU 'C' has no cited spec"),
], ids=["unknown_preset", "n_not_t", "size_past_table", "no_table", "no_batch1_step", "no_spec"])
def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, args, steps, published, message):
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, *args, steps=steps, published=published)
    text = str(e.value.code)
    assert message in text and "\n" not in text and e.value.code != 0


def test_default_run_reads_the_committed_h200_results(capsys):
    _script().main([])
    out = capsys.readouterr().out
    assert "pt-30b-d8" in out and "Table 6" in out and "Table 7" in out and "not predicted" in out


def test_the_perf_stage_writes_what_the_model_reads(tmp_path):
    """scripts/gpu_perf.py (the GPU `perf` stage) on the CPU with the tiny preset: its JSON gives the
    model a batch-1 decode step at its stated context and the measured prefill lengths, the
    decode bound counts the weights plus the KV cache of that context, and --profile records the
    batch-1 step's top operations."""
    import subprocess
    import sys

    from pt_trtllm import PTConfig
    from pt_trtllm.latency_model import kv_bytes_per_token, measured_for

    out = tmp_path / "perf.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "scripts/gpu_perf.py"), "--device", "cpu",
                           "--dtype", "float32", "--preset", "tiny", "--batches", "1,2", "--contexts", "24",
                           "--prefill_tokens", "16,300", "--modes", "eager", "--repeats", "2", "--profile",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    steps = json.loads(out.read_text())
    cfg = PTConfig.from_preset("tiny")
    measured = measured_for(steps, cfg, "eager")
    assert sorted(measured.decode) == [1, 2] and {c for _, c in measured.decode.values()} == {24}
    assert sorted(measured.prefill) == [16, 300] and all(ms > 0 for ms in measured.prefill.values())
    assert steps["max_position_embeddings"] == 301 > cfg.max_position_embeddings  # raised, and said so
    top = steps["decode"][0]["eager_top_kernels"]  # --profile: batch 1 only, by self time
    assert "eager_top_kernels" not in steps["decode"][1] and 0 < len(top) <= 15
    assert any("linear" in k["name"] or "mm" in k["name"] for k in top), top
    assert [k["self_us_per_step"] for k in top] == sorted((k["self_us_per_step"] for k in top), reverse=True)
    point = steps["decode"][1]
    assert point["cache_positions"] == 24 + 1  # sized to the context (and the step's own token)
    kv = 24 * 2 * kv_bytes_per_token(cfg) * 2  # float32: twice the model's bf16 bytes per token
    assert point["kv_read_GB"] * 1e9 == kv
    assert point["bound_ms"] == pytest.approx(1e3 * (point["weights_read_GB"] * 1e9 + kv) / (steps["read_bandwidth_TBps"] * 1e12))


def test_the_perf_stage_bounds_a_moe_step_by_its_routed_experts(tmp_path):
    """For a mixture-of-experts preset the decode bound counts only the experts a step can route
    to: tiny-moe has 4 sparse layers of 8 experts (top-2) of 3 x 256 x 256 float32 weights, so a
    batch of 2 reads 2 more experts per sparse layer than a batch of 1, and a batch of 8 all 8."""
    import subprocess
    import sys

    out = tmp_path / "perf.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "scripts/gpu_perf.py"), "--device", "cpu",
                           "--dtype", "float32", "--preset", "tiny-moe", "--batches", "1,2,8", "--contexts", "8",
                           "--prefill_tokens", "8", "--modes", "eager", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    read = {p["batch"]: round(p["weights_read_GB"] * 1e9) for p in json.loads(out.read_text())["decode"]}
    expert = 3 * 256 * 256 * 4
    assert read[2] - read[1] == 4 * 2 * expert
    assert read[8] - read[1] == 4 * 6 * expert
