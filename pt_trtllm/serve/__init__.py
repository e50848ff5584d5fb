"""The server: a PT model on T ranks behind Triton Inference Server and an OpenAI-compatible API
(docs/serving.md). The tools that
talk to it (client, load generator, benchmark comparison, process launcher) are in
`pt_trtllm.serve_tools`; the Triton repository of TensorRT-LLM engines in `pt_trtllm.trtllm`.

- `server`: `scripts/serve.py`: the lifecycle: start-up on every rank, warm-up, the fronts,
  watchdog, shutdown, exit.
- `signals`: SIGTERM/SIGINT on every rank, and SIGTERM when a rank's launcher dies.
- `front`: the front-end interface (`Front`: check, start, alive, stop) the lifecycle knows.
- `openai_front`: the OpenAI front: uvicorn in a thread of rank 0.
- `openai_app`: its FastAPI app: routes, streaming, cancellation on disconnect, errors.
- `openai_protocol`: an OpenAI request body -> `requests.build_sequences` (and its errors).
- `stop_strings`: stop strings over streamed text.
- `triton_front`: the Triton front: PyTriton's tritonserver started, watched and stopped.
- `pytriton_env`: the environment PyTriton's tritonserver needs and the patches to its proxy.
- `triton_cancel`: Triton's cancellations (reported by the patched proxy) -> the scheduler.
- `workspace`: rank 0's temporary workspace, and what dead servers left.
- `triton_protocol`: the Triton models' names and tensors (shared with the clients).
- `triton_models`: the handlers of the models `pt`, `pt_stream` and `pt_stats`.
- `triton_requests`: the input tensors of a Triton request -> `requests.build_sequences`.
- `requests`: validated sequences from prompts, max_tokens, sampling and end ids (any protocol).
- `sinks`: tokens from the scheduler's thread to a request's event loop.
- `detok`: incremental detokenization for streaming.
- `scheduler`: rank 0's in-flight batching scheduler over the engine's KV-cache slots.
- `stats`: the server's statistics (counters, the JSON document, the exit line).
- `plan`: the step plan rank 0 broadcasts to the other ranks before every step (its wire format),
  and how a follower waits for it without burning a core.
- `follower`: what ranks 1..T-1 run: receive a plan, run their track, repeat.
"""
