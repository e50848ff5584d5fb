"""Triton Python-backend model `preprocessing` (written by pt_trtllm for its TensorRT-LLM model
repository): text -> token ids for the `tensorrt_llm` model.

Inputs (batch dimension first): QUERY (BYTES [1]), REQUEST_OUTPUT_LEN (INT32 [1]), optional END_ID
and PAD_ID (INT32 [1]). Outputs: INPUT_ID (INT32 [-1], rows right-padded with the pad id),
REQUEST_INPUT_LEN, REQUEST_OUTPUT_LEN, OUT_END_ID, OUT_PAD_ID (INT32 [1]). Parameters:
`tokenizer_dir`, `add_special_tokens` (true/false).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def _flag(value: str, default: bool) -> bool:
    value = (value or "").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"])
        self.add_special_tokens = _flag(params.get("add_special_tokens"), True)
        eos = self.tokenizer.eos_token_id
        self.end_id = -1 if eos is None else int(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else int(pad)

    def _column(self, request, name, default, batch):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.full((batch, 1), default, dtype=np.int32)
        return tensor.as_numpy().reshape(batch, 1).astype(np.int32)

    def _one(self, request):
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        batch = query.shape[0]
        ids = []
        for i, raw in enumerate(query.reshape(batch)):
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            if not text:
                raise ValueError(f"text_input[{i}] is empty" if batch > 1 else "text_input is empty")
            ids.append(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens))
        output_len = self._column(request, "REQUEST_OUTPUT_LEN", 0, batch)
        if (output_len < 1).any():
            raise ValueError(f"max_tokens must be >= 1, got {int(output_len.min())}")
        end_id = self._column(request, "END_ID", self.end_id, batch)
        pad_id = self._column(request, "PAD_ID", self.pad_id, batch)
        width = max(len(x) for x in ids)
        input_id = np.empty((batch, width), dtype=np.int32)
        for i, x in enumerate(ids):
            input_id[i] = x + [int(pad_id[i, 0])] * (width - len(x))
        lengths = np.array([[len(x)] for x in ids], dtype=np.int32)
        return [pb_utils.Tensor("INPUT_ID", input_id), pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
                pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len), pb_utils.Tensor("OUT_END_ID", end_id),
                pb_utils.Tensor("OUT_PAD_ID", pad_id)]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(request)))
            except (ValueError, UnicodeDecodeError) as e:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses
