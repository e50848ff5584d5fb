"""The TensorRT-LLM engine path (docs/trtllm.md).

`model` and `config` are the network definition and need `tensorrt_llm` (1.2.1, TensorRT 10.x);
nothing else in pt_trtllm imports them. `detect`, `support` and `runner` import without it:
`runner` imports TensorRT-LLM only when it runs an engine.
"""
