"""The TensorRT-LLM engine path (docs/trtllm.md).

`model` (the network definition), `config`, `merges` and `attention` need `tensorrt_llm` (1.2.1,
TensorRT 10.x); nothing else in pt_trtllm imports them. Every other module here (`detect`,
`support`, `runner`, ...) imports without it: `runner` imports TensorRT-LLM only when it runs an
engine.
"""
