from setuptools import setup

setup(
    name="pt_trtllm",
    version="0.1.0",
    description="Serve Parallel Track (PT) transformers: HF model, converters, an MPI/NCCL track-parallel "
                "runtime, TensorRT-LLM engines and Triton deployment",
    python_requires=">=3.10",
    packages=["pt_trtllm"],
    package_data={"pt_trtllm": ["configs/*.json"]},  # pt_trtllm/configs links to configs/
    install_requires=[
        "torch==2.13.0",
        "transformers==4.57.6",
        "safetensors>=0.4",
        "numpy<2",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "tamm==0.2.0", "gguf>=0.10", "mpich", "mpi4py>=4"],
        "serve": ["nvidia-pytriton==0.7.0", "tritonclient[all]"],
        "trtllm": ["tensorrt_llm==1.2.1"],
    },
)
