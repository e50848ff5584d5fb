from setuptools import find_packages, setup

setup(
    name="pt_trtllm",
    version="0.1.0",
    description="Serve Parallel Track (PT) transformers: HF model, converters, an MPI/NCCL track-parallel "
                "runtime, TensorRT-LLM engines and Triton deployment",
    python_requires=">=3.10",
    packages=find_packages(include=["pt_trtllm", "pt_trtllm.*"]),
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
        # TensorRT-LLM 1.2.1 pins its own torch: install it first (NVIDIA's wheel or container), then
        # this package with `pip install --no-deps -e .` (docs/trtllm.md).
    },
)
