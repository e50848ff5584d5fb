"""Triton Python-backend model `postprocessing` (written by pt_trtllm for its TensorRT-LLM model
repository): token ids of the `tensorrt_llm` model -> text.

Inputs: TOKENS_BATCH (INT32 [-1, -1]: beams x tokens per request row), SEQUENCE_LENGTH (INT32
[-1]: tokens per beam). Output: OUTPUT (BYTES [-1]: one text per beam). Parameters:
`tokenizer_dir`, `skip_special_tokens` (true/false). With streaming each response carries only
the new tokens, which are decoded on their own.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"])
        self.skip_special_tokens = params.get("skip_special_tokens", "true").strip().lower() not in ("false", "0", "no")

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            if tokens.ndim == 2:  # no beam dimension
                tokens, lengths = tokens[:, None, :], lengths.reshape(-1, 1)
            texts = np.empty(lengths.shape, dtype=object)
            for b in range(tokens.shape[0]):
                for k in range(tokens.shape[1]):
                    ids = tokens[b, k, : int(lengths[b, k])].tolist()
                    texts[b, k] = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens).encode()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", texts)]))
        return responses
