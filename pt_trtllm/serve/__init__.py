"""Serving a PT model behind Triton Inference Server.

- `plan`: the step plan rank 0 broadcasts to the other ranks before every step (one "other"
  collective), and how a follower waits for it without burning a core.
- `scheduler`: rank 0's in-flight batching scheduler over the engine's KV-cache slots.
- `follower`: what ranks 1..T-1 run: receive a plan, run their track, repeat.
- `requests`: turning a Triton request into validated sequences (errors name the problem).
- `detok`: incremental detokenization for streaming.
- `triton_app`: the PyTriton binding (models `pt` and `pt_stream`) and its environment.
- `server`: `scripts/serve.py`: start-up on every rank, signals, watchdog, shutdown.
- `trtllm_repo`: a Triton model repository for the TensorRT-LLM backend (`scripts/triton_repo.py`).
- `bench`: the serving load generator (`scripts/bench_serving.py`).
"""
