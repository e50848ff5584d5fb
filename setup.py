from setuptools import find_packages, setup

setup(
    name="pt_trtllm",
    version="0.1.0",
    description="Serve Parallel Track (PT) transformers: HF model, converters, an MPI/NCCL track-parallel "
                "runtime, TensorRT-LLM engines and Triton deployment",
    python_requires=">=3.10",
    packages=find_packages(include=["pt_trtllm", "pt_trtllm.*"]),
    package_data={"pt_trtllm": ["configs/*.json"]},  # pt_trtllm/configs links to configs/
    # ranges the code supports; constraints.txt pins what the Makefile and CI install
    install_requires=[
        "torch>=2.5",
        "transformers>=4.57,<6",  # tested with 4.57.6 (pinned) and 5.17
        "safetensors>=0.4",
        "numpy<2",  # PyTriton needs numpy < 2
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "tamm==0.2.0", "gguf>=0.10", "mpich", "mpi4py>=4",
                 "openai>=1.40",  # the official client, against the OpenAI-compatible API
                 "nvidia-nccl-cu13"],  # nccl.h and libnccl.so.2: CI links plugins/ (tests/test_plugins.py)
        "serve": ["nvidia-pytriton==0.7.0", "tritonclient[all]", "matplotlib",  # PyTriton bundles tritonserver
                  "fastapi>=0.110", "uvicorn>=0.30"],  # the OpenAI-compatible API (serve.py --openai_port)
        # TensorRT-LLM 1.2.1 brings its own torch (docs/trtllm.md); not installable on CPU-only machines
        "trtllm": ["tensorrt_llm==1.2.1"],
    },
)
