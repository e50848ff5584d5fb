#!/usr/bin/env python3
"""Serve a PT model on T ranks behind Triton Inference Server (PyTriton): models `pt` and
`pt_stream` (streaming); with --openai_port, also an OpenAI-compatible API (/v1/completions,
/v1/chat/completions, /v1/models).

  mpirun -n T python scripts/serve.py --engine_dir CKPT [--tokenizer_dir HF_DIR]
      [--schedule block|sublayer] [--host 127.0.0.1 --http_port 8000 --grpc_port 8001
      --metrics_port 8002] [--openai_port P --served_model_name NAME]
      [--max_batch_size 16 --max_seq_len N --max_output_len N]

Rank 0 runs the fronts and the in-flight batching scheduler; ranks 1..T-1 follow. See
docs/serving.md.
"""

import sys

if __name__ == "__main__":  # imports stay inside: PyTriton's helper processes re-import this file
    from pt_trtllm.serve.server import main

    sys.exit(main())
