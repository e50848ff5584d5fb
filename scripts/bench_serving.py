#!/usr/bin/env python3
"""Serving benchmark of a PT model behind Triton (scripts/serve.py), in the style of `vllm bench serve`.

  python scripts/bench_serving.py --url 127.0.0.1:8001 --num_requests N (--concurrency C |
      --request_rate R [--burstiness B]) --input_len L --output_len O [--protocol grpc|http]
      [--dataset prompts.jsonl] [--output_dir DIR --label NAME]

Streams every request through `pt_stream` and reports TTFT, TPOT, inter-token latency and E2E
latency (mean, p50, p90, p99), request and token throughput, and failures, as JSON, a markdown
table and a PNG. scripts/bench_serving_schedules.py runs it against the block and the sublayer
schedule of one checkpoint and prints them side by side.
"""

import sys

if __name__ == "__main__":
    from pt_trtllm.serve_tools.bench import main

    sys.exit(main())
