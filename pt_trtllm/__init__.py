"""pt_trtllm: serve Parallel Track (PT) transformers (arXiv 2602.07306) on many GPUs.

Importing the package registers `PTConfig` / `PTForCausalLM` with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` loads a PT checkpoint (`model_type: parallel_track`).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .config import PTConfig
from .hf_model import PTForCausalLM

AutoConfig.register(PTConfig.model_type, PTConfig)
AutoModelForCausalLM.register(PTConfig, PTForCausalLM)

__all__ = ["PTConfig", "PTForCausalLM"]
