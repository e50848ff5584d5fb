"""Python-backend models (`model.py` files) that scripts/triton_repo.py copies into a Triton model
repository for the TensorRT-LLM backend: tokenization before the `tensorrt_llm` model and
detokenization after it. They run inside Triton (they import `triton_python_backend_utils`) and
are never imported by this package."""
