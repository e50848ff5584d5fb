"""scripts/triton_repo.py: the Triton model repository for the TensorRT-LLM backend (1.2.1). Every
config.pbtxt is parsed with Triton's model-config protobuf (shipped in tritonclient) and its values
checked; the ensemble's wiring is checked step by step; and the repository runs in a real Triton
server (PyTriton's tritonserver) with a stand-in for the `tensorrt_llm` model (the C++ backend
needs GPUs), so tokenization, the ensemble and detokenization are exercised for real."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from helpers import REPO, make_pt_model, run_script
from pt_trtllm.convert.writer import convert

SCRIPT = REPO / "scripts" / "triton_repo.py"
MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing")
DT = model_config_pb2.DataType


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """An engine directory as scripts/build.py writes it (config.json with the per-rank
    checkpoint's config as pretrained_config; empty rank files: nothing here runs them)."""
    root = tmp_path_factory.mktemp("trtllm_repo")
    make_pt_model("tiny", seed=2, vocab_size=49152).save_pretrained(root / "hf")
    convert(root / "hf", root / "ckpt", progress=False)
    eng = root / "engines"
    eng.mkdir()
    build = {"max_batch_size": 8, "max_input_len": 128, "max_seq_len": 256, "max_beam_width": 1,
             "max_num_tokens": 8192}
    (eng / "config.json").write_text(json.dumps({"version": "1.2.1", "build_config": build,
                                                 "pretrained_config": json.loads((root / "ckpt/config.json").read_text())}))
    for r in range(2):
        (eng / f"rank{r}.engine").write_bytes(b"")
    return eng


def repo_main(*args) -> tuple[int, str]:
    """scripts/triton_repo.py's main in this process: (exit status, stderr)."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("triton_repo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = module.main([str(a) for a in args])
    return code, err.getvalue()


def parse(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {name: text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            for name in MODELS}


def params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def test_every_config_parses_with_the_backend_parameters(engines, smollm2_dir, tmp_path):
    repo = tmp_path / "repo"
    r = run_script(SCRIPT, "--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", repo)
    assert r.returncode == 0, r.stderr
    assert f"launch_triton_server.py --world_size 2 --model_repo {repo.resolve()}" in r.stdout
    cfgs = parse(repo)
    assert {name: c.name for name, c in cfgs.items()} == {m: m for m in MODELS}
    assert all(c.max_batch_size == 8 for c in cfgs.values())  # the engine's max_batch_size

    trt = cfgs["tensorrt_llm"]
    assert trt.backend == "tensorrtllm" and not trt.model_transaction_policy.decoupled
    p = params(trt)
    assert p["gpt_model_type"] == "inflight_fused_batching" and p["gpt_model_path"] == str(engines.resolve())
    assert p["max_beam_width"] == "1" and p["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert p["kv_cache_free_gpu_mem_fraction"] == "0.9" and p["exclude_input_in_output"] == "true"
    assert p["enable_kv_cache_reuse"] == "false" and p["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    # read without a default by the backend's guided-decoding set-up: must be present
    assert p["tokenizer_dir"] == str(Path(smollm2_dir).resolve())
    assert p["guided_decoding_backend"] == "" and p["xgrammar_tokenizer_info_path"] == ""
    assert p["executor_worker_path"].endswith("/tensorrtllm/trtllmExecutorWorker")
    assert list(trt.dynamic_batching.preferred_batch_size) == [8]
    assert [(g.count, g.kind) for g in trt.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    inputs = {i.name: i for i in trt.input}
    assert inputs["input_ids"].data_type == DT.TYPE_INT32 and list(inputs["input_ids"].dims) == [-1]
    assert inputs["input_ids"].allow_ragged_batch and not inputs["input_ids"].optional
    for name in ("input_lengths", "request_output_len"):
        assert list(inputs[name].dims) == [1] and inputs[name].HasField("reshape")
        assert list(inputs[name].reshape.shape) == [] and not inputs[name].optional
    assert inputs["seed"].data_type == DT.TYPE_UINT64 and inputs["streaming"].data_type == DT.TYPE_BOOL
    assert all(inputs[n].optional for n in ("end_id", "pad_id", "temperature", "runtime_top_k", "runtime_top_p"))
    outputs = {o.name: o for o in trt.output}
    assert list(outputs["output_ids"].dims) == [-1, -1] and list(outputs["sequence_length"].dims) == [-1]

    for name in ("preprocessing", "postprocessing"):
        c = cfgs[name]
        assert c.backend == "python" and params(c)["tokenizer_dir"] == str(Path(smollm2_dir).resolve())
        assert (repo / name / "1" / "model.py").is_file()
    assert params(cfgs["preprocessing"])["add_special_tokens"] == "true"
    assert params(cfgs["postprocessing"])["skip_special_tokens"] == "true"
    assert cfgs["ensemble"].platform == "ensemble"
    assert (repo / "tensorrt_llm" / "1").is_dir()


@pytest.mark.parametrize("logits_dtype, triton_type", [(None, DT.TYPE_FP32), ("float16", DT.TYPE_FP16),
                                                      ("bfloat16", DT.TYPE_BF16)])
def test_logits_outputs_have_the_engines_logits_dtype(engines, smollm2_dir, tmp_path, logits_dtype, triton_type):
    """The backend's context_logits and generation_logits are declared with the engine's
    logits_dtype (pretrained_config.logits_dtype; float32 when the engine records none)."""
    eng = tmp_path / "engines"
    shutil.copytree(engines, eng)
    data = json.loads((eng / "config.json").read_text())
    if logits_dtype is not None:
        data["pretrained_config"]["logits_dtype"] = logits_dtype
    (eng / "config.json").write_text(json.dumps(data))
    code, err = repo_main("--engine_dir", eng, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "repo")
    assert code == 0, err
    outputs = {o.name: o.data_type for o in parse(tmp_path / "repo")["tensorrt_llm"].output}
    assert outputs["context_logits"] == outputs["generation_logits"] == triton_type


def test_the_ensemble_is_wired_consistently(engines, smollm2_dir, tmp_path):
    """Each step reads only ensemble inputs or earlier steps' outputs, with the models' own input
    and output names and matching data types; every ensemble output is produced."""
    repo = tmp_path / "repo"
    assert repo_main("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", repo)[0] == 0
    cfgs = parse(repo)
    ens = cfgs["ensemble"]
    available = {i.name: i.data_type for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = cfgs[step.model_name]
        model_in = {i.name: i.data_type for i in model.input}
        model_out = {o.name: o.data_type for o in model.output}
        for key, value in step.input_map.items():
            assert key in model_in, (step.model_name, key)
            assert value in available, (step.model_name, value)
            assert available[value] == model_in[key], (step.model_name, key, value)
        required = {i.name for i in model.input if not i.optional}
        assert required <= set(step.input_map), (step.model_name, required - set(step.input_map))
        for key, value in step.output_map.items():
            assert key in model_out, (step.model_name, key)
            available[value] = model_out[key]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["preprocessing", "tensorrt_llm", "postprocessing"]
    for out in ens.output:
        assert available.get(out.name) == out.data_type, out.name
    assert {o.name for o in ens.output} == {"text_output", "output_ids"}


def test_options_and_refusals(engines, smollm2_dir, tmp_path):
    code, err = repo_main("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "a",
                          "--decoupled", "--max_batch_size", "4", "--batching_strategy", "V1",
                          "--kv_cache_free_gpu_mem_fraction", "0.5", "--gpu_device_ids", "0,1")
    assert code == 0, err
    cfgs = parse(tmp_path / "a")
    assert cfgs["tensorrt_llm"].model_transaction_policy.decoupled
    assert all(c.max_batch_size == 4 for c in cfgs.values())
    p = params(cfgs["tensorrt_llm"])
    assert p["gpt_model_type"] == "V1" and p["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert p["gpu_device_ids"] == "0,1"

    def refused(*args, message):
        code, err = repo_main(*args)
        assert code == 2 and message in err, err

    refused("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "a",
            message="exists and is not empty")
    refused("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "b",
            "--max_batch_size", "9", message="exceeds the engine's max_batch_size 8")
    refused("--engine_dir", engines, "--tokenizer_dir", tmp_path, "--output_dir", tmp_path / "c",
            message="holds no HF tokenizer")
    broken = tmp_path / "broken"
    shutil.copytree(engines, broken)
    (broken / "rank1.engine").unlink()
    refused("--engine_dir", broken, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "d",
            message="lacks rank1.engine")
    assert repo_main("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", tmp_path / "a",
                     "--force")[0] == 0
    assert "launch_triton_server.py --world_size" in (REPO / "docs" / "serving.md").read_text()


STAND_IN = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Stand-in for the TensorRT-LLM engines: "generates" the prompt backwards."""

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)
            wanted = pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)
            tokens = np.zeros((ids.shape[0], 1, int(wanted.max())), np.int32)
            for b in range(ids.shape[0]):
                prompt = ids[b, : lengths[b]][::-1]
                tokens[b, 0, : wanted[b]] = [prompt[i % len(prompt)] for i in range(wanted[b])]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output_ids", tokens),
                                                         pb_utils.Tensor("sequence_length", wanted.reshape(-1, 1))]))
        return responses
'''


def test_the_repository_serves_in_triton_with_a_stand_in_engine(engines, smollm2_dir, tmp_path, monkeypatch):
    """The generated repository, with tensorrt_llm's backend swapped for a Python stand-in, loads
    in a real Triton server; the ensemble tokenizes, "generates" and detokenizes over HTTP
    (infer and generate) and gRPC; an empty prompt is refused by name."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from pytriton.triton import Triton, TritonConfig
    from transformers import AutoTokenizer

    from pt_trtllm.serve_tools.launcher import free_ports
    from pt_trtllm.serve.pytriton_env import prepare_environment

    repo = tmp_path / "repo"
    assert repo_main("--engine_dir", engines, "--tokenizer_dir", smollm2_dir, "--output_dir", repo)[0] == 0
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('backend: "tensorrtllm"', 'backend: "python"'))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(STAND_IN)
    for var in ("LD_LIBRARY_PATH", "PYTRITON_NO_TENSORSTORE"):  # restored after the test
        monkeypatch.setenv(var, os.environ.get(var, ""))
    prepare_environment(Path(tempfile.mkdtemp(dir=tmp_path)))

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = ["The capital of France is", "Hello world"]
    backwards = [tok.encode(p)[::-1] for p in prompts]
    expect = [[b[i % len(b)] for i in range(3)] for b in backwards]
    http, grpc, metrics = free_ports(3)
    config = TritonConfig(model_repository=repo, http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1",
                          grpc_port=grpc, metrics_address="127.0.0.1", metrics_port=metrics, exit_timeout_secs=2)
    with Triton(config=config, workspace=tmp_path / "ws"):
        body = json.dumps({"text_input": prompts[0], "max_tokens": 3}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/ensemble/generate", data=body,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            out = json.loads(r.read())
        assert out["output_ids"] == expect[0] and out["text_output"] == tok.decode(expect[0])

        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        text = httpclient.InferInput("text_input", [2, 1], "BYTES")
        text.set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=object))
        n = httpclient.InferInput("max_tokens", [2, 1], "INT32")
        n.set_data_from_numpy(np.array([[3], [3]], np.int32))
        result = client.infer("ensemble", [text, n])
        texts = [row.reshape(-1)[0].decode() for row in result.as_numpy("text_output")]
        assert texts == [tok.decode(e) for e in expect]
        assert result.as_numpy("output_ids").reshape(2, -1).tolist() == expect
        empty = httpclient.InferInput("text_input", [1, 1], "BYTES")
        empty.set_data_from_numpy(np.array([[b""]], dtype=object))
        one = httpclient.InferInput("max_tokens", [1, 1], "INT32")
        one.set_data_from_numpy(np.array([[3]], np.int32))
        with pytest.raises(Exception, match="text_input is empty"):
            client.infer("ensemble", [empty, one])
        client.close()

        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[prompts[1].encode()]], dtype=object))
        n = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
        n.set_data_from_numpy(np.array([[3]], np.int32))
        result = g.infer("ensemble", [text, n])
        assert result.as_numpy("text_output").reshape(-1)[0].decode() == tok.decode(expect[1])
        g.close()
