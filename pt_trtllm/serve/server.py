"""`mpirun -n T python scripts/serve.py ...`: every rank loads its track; rank 0 runs the Triton
server and the scheduler, the others follow. Start-up errors are agreed on by all ranks (every rank
prints the first one, none hangs); Triton starts only after every rank has loaded and run a warm-up
step together, so the ready endpoint never says ready before the model can serve.

Shutdown: SIGTERM or SIGINT (mpiexec forwards them to every rank) makes rank 0 stop admitting,
finish the running requests (up to --drain_timeout s), send the followers the stop plan and stop
Triton; every rank exits 0. A rank that dies takes the job down (mpiexec kills the others, and
tritonserver dies with rank 0); a step that does not finish within --step_timeout s (a rank hung)
makes rank 0 abort the job. So the server reports unhealthy or exits, and never hangs.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback

from ..formats import CheckpointError
from ..runtime.launch import setup, start_on_all_ranks

SCHEDULES = ("block", "sublayer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a PT model on T ranks behind Triton Inference Server "
                                            "(models `pt` and `pt_stream`)")
    p.add_argument("--engine_dir", required=True, help="per-rank checkpoint (convert_checkpoint.py)")
    p.add_argument("--tokenizer_dir", help="HF tokenizer: enables text_input / text_output")
    p.add_argument("--schedule", choices=SCHEDULES, help="merge schedule (default: the checkpoint's merge_schedule)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--http_port", type=int, default=8000)
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--metrics_port", type=int, default=8002)
    p.add_argument("--max_batch_size", type=int, default=16, help="KV-cache slots: sequences generated at once")
    p.add_argument("--max_seq_len", type=int, help="positions per slot, prompt + output "
                                                  "(default: max_position_embeddings, at most 4096)")
    p.add_argument("--max_output_len", type=int, help="largest max_tokens accepted (default: max_seq_len - 1)")
    p.add_argument("--max_prefill_tokens", type=int, default=4096,
                   help="prompt tokens prefilled in one step (at least one prompt per step)")
    p.add_argument("--instances", type=int, help="Triton instances of `pt`, i.e. concurrent requests to it; each "
                                                 "is a Python-backend process of ~45 MB (default: --max_batch_size, "
                                                 "at most 32); pt_stream needs one for any number")
    p.add_argument("--drain_timeout", type=float, default=10.0, help="on SIGTERM, seconds to finish running requests")
    p.add_argument("--step_timeout", type=float, default=300.0,
                   help="abort the job when one step takes longer (a rank died or hung)")
    p.add_argument("--follower_max_sleep", type=float, default=1e-3,
                   help="longest sleep (s) of a waiting follower between checks for rank 0's next step "
                        "(0: spin; default 0.001)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--threads", type=int, help="torch threads per rank on CPU (default: cores / local ranks)")
    p.add_argument("--no_cuda_graphs", action="store_true", help="run CUDA decode steps eagerly")
    p.add_argument("--verbose", action="store_true", help="log PyTriton and per-request details")
    return p.parse_args(argv)


class Interrupted(BaseException):
    """Raised by the signal handler while `Signals.interrupt` is set (not an Exception, so that
    no `except Exception` on the way swallows it)."""


class Signals:
    """SIGTERM and SIGINT, caught from the start on every rank (a rank killed by the default
    action would take the job down uncleanly): what arrived, when, and who to tell."""

    def __init__(self):
        self.received: int | None = None
        self.received_at: float | None = None
        self.on_signal = None
        self.interrupt = False

    def install(self) -> "Signals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
        if self.on_signal is not None:
            self.on_signal()
        if self.interrupt:
            self.interrupt = False
            raise Interrupted()


def _eos_ids(cfg, tokenizer) -> frozenset[int]:
    eos = cfg.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset(eos) if isinstance(eos, (list, tuple)) else frozenset({eos})


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure is a bad --tokenizer_dir
        raise ValueError(f"--tokenizer_dir {path}: cannot load a tokenizer ({e.__class__.__name__}: {e})") from None


def _warm_up(engine, channel, schedule, rank0: bool) -> None:
    """One step on every rank before Triton starts: a 1-token prefill into slot 0 and decode steps
    of every batch size CUDA graphs will be captured for (1 on CPU)."""
    from .plan import StepPlan, run_plan

    sizes = range(1, engine.max_batch + 1) if engine.cuda_graphs else [1]
    plans = [StepPlan(prefill_slots=[0], prompts=[[0]])]
    plans += [StepPlan(decode_tokens=[0] * n, decode_positions=[0] * n) for n in sizes]
    for plan in plans:
        if rank0:
            channel.send(plan)
        else:
            plan = channel.receive()
        run_plan(engine, plan, schedule)


def serve(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    signals = Signals().install()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <rank pid>: print every thread's stack
    device, comm = setup(args.device, args.threads)

    def start():
        from ..runtime.engine import TrackEngine
        from .triton_app import check_ports

        if args.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be >= 1, got {args.max_batch_size}")
        from ..formats import read_rank_config

        max_len = args.max_seq_len or min(read_rank_config(args.engine_dir)[0].max_position_embeddings, 4096)
        engine = TrackEngine(args.engine_dir, comm, device, max_batch=args.max_batch_size, max_len=max_len,
                             cuda_graphs=not args.no_cuda_graphs)
        if args.max_seq_len is not None and args.max_seq_len > engine.max_len:
            raise ValueError(f"--max_seq_len {args.max_seq_len} exceeds max_position_embeddings {engine.max_len}")
        schedule = args.schedule or engine.cfg.merge_schedule
        if schedule not in SCHEDULES:
            raise ValueError(f"the checkpoint's merge_schedule {schedule!r} cannot be served: give --schedule")
        engine.model.segments(schedule)  # refuses a schedule this model does not define
        max_output = args.max_output_len or engine.max_len - 1
        if not 1 <= max_output < engine.max_len:
            raise ValueError(f"--max_output_len must be in [1, {engine.max_len - 1}], got {max_output}")
        tokenizer = None
        if comm.rank == 0:
            if args.tokenizer_dir:
                tokenizer = _load_tokenizer(args.tokenizer_dir)
            check_ports(args.host, {"http_port": args.http_port, "grpc_port": args.grpc_port,
                                    "metrics_port": args.metrics_port})
        return engine, schedule, tokenizer, max_output

    engine, schedule, tokenizer, max_output = start_on_all_ranks(comm, start, (ValueError, CheckpointError))
    from .plan import PlanChannel

    channel = PlanChannel(comm, engine.max_batch, args.follower_max_sleep)
    try:
        _warm_up(engine, channel, schedule, comm.rank == 0)
    except Exception:  # a failure here can differ between ranks: take them all down
        traceback.print_exc()
        comm.abort(1)
    if comm.rank != 0:
        from .follower import follow

        return follow(engine, channel, schedule, signals, grace=args.drain_timeout + 30)
    return _serve_rank0(args, engine, comm, channel, schedule, tokenizer, max_output, signals)


def _serve_rank0(args, engine, comm, channel, schedule, tokenizer, max_output, signals) -> int:
    from .plan import StepPlan
    from .requests import Limits
    from .scheduler import Scheduler
    from .triton_app import (MODEL, STREAM_MODEL, PTModels, bind, make_workspace, patch_pytriton_proxy,
                             prepare_environment, remove_workspace)

    limits = Limits(engine.cfg.vocab_size, engine.max_len, max_output, _eos_ids(engine.cfg, tokenizer))
    state = {"triton": None, "checked": 0.0}

    def alive() -> bool:  # at most once a second, while idle
        if state["triton"] is None or time.monotonic() - state["checked"] < 1.0:
            return True
        state["checked"] = time.monotonic()
        return state["triton"].is_alive()

    comm.reset_counts()  # count what serving does, not the warm-up
    scheduler = Scheduler(engine, channel, schedule, args.max_prefill_tokens, idle_check=alive)
    signals.on_signal = lambda: scheduler.stop(args.drain_timeout)
    if signals.received is not None:  # stopped while loading: do not start Triton
        channel.send(StepPlan(stop=True))
        return 0
    workspace = make_workspace()
    failure, triton = None, None
    try:
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

        for note in prepare_environment(workspace):
            logging.getLogger("pt_trtllm.serve").info(note)
        config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                              grpc_port=args.grpc_port, metrics_address=args.host, metrics_port=args.metrics_port,
                              exit_timeout_secs=max(1, math.ceil(args.drain_timeout)),
                              log_verbose=1 if args.verbose else None)
        # a local model store: tritonserver loads both models before it opens its ports, so "ready"
        # is never answered before the models can serve (PyTriton's default loads them afterwards)
        policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        triton = state["triton"] = Triton(config=config, workspace=workspace / "pytriton",
                                          triton_lifecycle_policy=policy)
        instances = args.instances or min(engine.max_batch, 32)
        bind(triton, PTModels(scheduler, tokenizer, limits), engine.max_batch, instances)
        for note in patch_pytriton_proxy(workspace / "pytriton" / "model-store"):
            logging.getLogger("pt_trtllm.serve").info(note)
        # PyTriton waits for tritonserver holding a lock its exit handler needs: a signal now (which
        # mpiexec also delivers to tritonserver) would leave it waiting for minutes, so it interrupts
        signals.interrupt = True
        try:
            triton.run()
        finally:
            signals.interrupt = False
    except Interrupted:
        failure = "stopped by a signal while starting"
    except Exception as e:  # noqa: BLE001 - report, stop the followers, exit
        failure = f"error: cannot start the Triton server: {e.__class__.__name__}: {e}"
    if failure is not None:
        print(failure, file=sys.stderr, flush=True)
        channel.send(StepPlan(stop=True))
        stopped = triton is None or _stop_triton(triton, 10.0)
        remove_workspace(workspace)
        code = 0 if signals.received is not None else 1
        if not stopped:
            sys.stderr.flush()
            os._exit(code)
        return code

    done = threading.Event()
    threading.Thread(target=_watchdog, args=(scheduler, comm, args.step_timeout, done), daemon=True).start()
    print(f"serving models {MODEL!r} and {STREAM_MODEL!r}: http {args.host}:{args.http_port} grpc "
          f"{args.host}:{args.grpc_port} metrics {args.host}:{args.metrics_port} | {comm.world_size} ranks "
          f"({comm.name}, {engine.device}), schedule={schedule}, merges/forward={engine.expected_merges(schedule)}, "
          f"max_batch_size={engine.max_batch}, max_seq_len={engine.max_len}, "
          f"tokenizer={'yes' if tokenizer is not None else 'no'}", flush=True)
    try:
        scheduler.run()
    except Exception:  # followers may be inside a collective: take every rank down
        traceback.print_exc()
        sys.stderr.flush()
        comm.abort(1)
        return 1
    done.set()
    channel.send(StepPlan(stop=True))
    died = signals.received is None  # the scheduler stopped because tritonserver is gone
    stopped = _stop_triton(triton, args.drain_timeout + 20)
    remove_workspace(workspace)
    s = scheduler.stats
    print(f"stopped ({'tritonserver exited' if died else signal.Signals(signals.received).name}): "
          f"{s['requests']} sequences, {s['steps']} steps, {s['decode_tokens']} decoded tokens, "
          f"{s['prefill_tokens']} prefilled tokens, at most {s['max_running']} running at once, "
          f"{s['errors']} failed; {1e3 * s['step_s'] / max(1, s['steps']):.2f} ms per step, "
          f"{100 * s['forward_s'] / max(1e-9, s['step_s']):.0f}% of it in forward passes; "
          f"{comm.calls['merge'] / max(1, s['forwards']):g} merges per forward pass, "
          f"{comm.calls['other'] / max(1, s['steps']):.2f} other collectives per step", flush=True)
    if not stopped:  # PyTriton's atexit handler would wait for it again
        sys.stderr.flush()
        os._exit(1)
    return 1 if died else 0


def _stop_triton(triton, timeout: float = 30.0) -> bool:
    """Stop tritonserver (it may already be exiting: mpiexec forwards SIGTERM to rank 0's process
    group, and Triton then drains for exit_timeout_secs = --drain_timeout itself)."""
    def stop():
        try:
            triton.stop()
        except Exception as e:  # noqa: BLE001 - best effort at shutdown
            print(f"warning: stopping the Triton server: {e}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        print(f"warning: the Triton server did not stop within {timeout:.0f} s", file=sys.stderr, flush=True)
        return False
    return True


def _watchdog(scheduler, comm, timeout: float, done: threading.Event) -> None:
    while not done.wait(1.0):
        started = scheduler.step_started
        if started is not None and time.perf_counter() - started > timeout:
            print(f"error: a step has not finished in {timeout:.0f} s: a rank died or hung; aborting every rank",
                  file=sys.stderr, flush=True)
            comm.abort(1)


def main(argv=None) -> int:
    return serve(parse_args(argv))
