#!/usr/bin/env python3
"""PT's claim the way serving people measure it: the same checkpoint served with the block schedule
(PT: L/D merges per forward) and the sublayer schedule (tensor parallelism: 2L), the same load, side
by side.

  python scripts/bench_serving_schedules.py (--preset bench-tiny | --engine_dir CKPT) [--ranks T]
      [--num_requests 200 --concurrency 8 --input_len 128 --output_len 64] [--threads 1]
      [--rounds 1] [--output_dir docs/serving --label serving-schedules]

Each schedule gets a fresh `mpiexec -n T scripts/serve.py` on free loopback ports; the load is
scripts/bench_serving.py's (gRPC streaming). Writes <label>.json, .md and .png.
"""

import sys

if __name__ == "__main__":
    from pt_trtllm.serve_tools.bench_compare import main

    sys.exit(main())
