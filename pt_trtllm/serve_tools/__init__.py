"""Tools around the server of `pt_trtllm.serve` (docs/serving.md), none of them part of it:

- `client`: requests to its Triton models with tritonclient, and over HTTP generate_stream
  (`scripts/client.py`, the load generator, tests).
- `launcher`: a server as a subprocess tree on free loopback ports, started and cleaned up
  (the benchmark comparison, tests).
- `bench`: the serving load generator (`scripts/bench_serving.py`).
- `bench_compare`: block vs sublayer under the same load (`scripts/bench_serving_schedules.py`).
"""
