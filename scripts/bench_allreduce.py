#!/usr/bin/env python3
"""Latency of the runtime's CPU merge: an in-place mpi4py Allreduce (sum) of float32 buffers.

  mpiexec -n 2 python scripts/bench_allreduce.py [--sizes_kib 1,4,64,1024] [--iters 1000]
"""

import argparse
import time

import numpy as np
from mpi4py import MPI


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes_kib", default="1,4,64,1024")
    p.add_argument("--iters", type=int, default=1000)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    for kib in (int(x) for x in args.sizes_kib.split(",")):
        buf = np.ones(kib * 256, dtype=np.float32)
        for _ in range(100):  # warm-up
            comm.Allreduce(MPI.IN_PLACE, buf)
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(args.iters):
            comm.Allreduce(MPI.IN_PLACE, buf)
        us = (time.perf_counter() - start) / args.iters * 1e6
        if comm.rank == 0:
            print(f"{comm.size} ranks, {kib} KiB: {us:.1f} us per all-reduce", flush=True)


if __name__ == "__main__":
    main()
