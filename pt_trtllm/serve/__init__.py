"""Serving a PT model behind Triton Inference Server (docs/serving.md).

- `plan`: the step plan rank 0 broadcasts to the other ranks before every step (an "other"
  collective), and how a follower waits for it without burning a core.
- `scheduler`: rank 0's in-flight batching scheduler over the engine's KV-cache slots.
- `follower`: what ranks 1..T-1 run: receive a plan, run their track, repeat.
- `requests`: turning a Triton request into validated sequences (errors name the problem).
- `detok`: incremental detokenization for streaming.
- `triton_app`: the PyTriton binding (models `pt` and `pt_stream`) and the environment of its
  tritonserver.
- `server`: `scripts/serve.py`: start-up on every rank, signals, watchdog, shutdown.
- `client`: requests with tritonclient (`scripts/client.py`, tests).
- `launcher`: a server as a subprocess on free loopback ports (benchmark wrapper, tests).
- `bench`, `bench_compare`: the serving load generator (`scripts/bench_serving.py`) and the
  block-vs-sublayer wrapper (`scripts/bench_serving_schedules.py`).
- `trtllm_repo`, `trtllm_models/`: a Triton model repository for the TensorRT-LLM backend
  (`scripts/triton_repo.py`).
"""
