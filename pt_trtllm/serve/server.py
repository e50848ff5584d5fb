"""`mpirun -n T python scripts/serve.py ...`: the server's lifecycle. Every rank loads its track;
rank 0 runs the fronts (front.py: Triton, and the OpenAI API with --openai_port) and the scheduler,
the others follow. Start-up errors are agreed on by all ranks (every rank prints the first one,
none hangs); the fronts start only after every rank has loaded and run a warm-up step together, so
the ready endpoint never says ready before the model can serve.

Shutdown: SIGTERM or SIGINT (mpiexec forwards them to every rank) makes rank 0 stop admitting,
finish the running requests (up to --drain_timeout s), send the followers the stop plan and stop
the fronts; every rank exits 0. A rank that dies takes the job down (mpiexec kills the others, and
tritonserver dies with rank 0); a killed mpiexec too (every rank gets SIGTERM when the launcher's
process that started it dies); a step that does not finish within --step_timeout s (a rank hung)
makes rank 0 abort the job. So the server reports unhealthy or exits, and never hangs.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ..cli import add_device_flags, end_ids, load_tokenizer, write_atomic
from ..formats import CheckpointError
from ..plugin_lib import PluginLibraryError
from ..runtime.launch import setup, start_on_all_ranks
from ..schedule import CONTEXTS, check_schedule
from .signals import Interrupted, Signals, die_with_parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a PT model on T ranks behind Triton Inference Server "
                                            "(models `pt` and `pt_stream`) and, with --openai_port, an "
                                            "OpenAI-compatible API")
    p.add_argument("--engine_dir", required=True, help="per-rank checkpoint (convert_checkpoint.py)")
    p.add_argument("--tokenizer_dir", help="HF tokenizer: enables text_input / text_output")
    p.add_argument("--schedule", choices=CONTEXTS["server"],
                   help="merge schedule (default: the checkpoint's merge_schedule)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--http_port", type=int, default=8000)
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--metrics_port", type=int, default=8002)
    p.add_argument("--openai_port", type=int, help="also serve the OpenAI-compatible API (/v1/completions, "
                                                   "/v1/chat/completions, /v1/models) on this port; needs "
                                                   "--tokenizer_dir")
    p.add_argument("--served_model_name", help="the model name of the OpenAI API (default: --engine_dir as given)")
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
    p.add_argument("--stats_json", help="write the server's statistics (JSON, as model pt_stats answers them "
                                        "while serving) to this file at exit")
    add_device_flags(p)
    p.add_argument("--verbose", action="store_true", help="log PyTriton and per-request details")
    return p.parse_args(argv)


def _warm_up(engine, channel, schedule, rank0: bool) -> None:
    """One step on every rank before the fronts start: a 1-token prefill into slot 0 and decode
    steps of every batch size CUDA graphs will be captured for (1 on CPU)."""
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


def _fronts(args) -> list:
    """The fronts, in the order they start: the OpenAI API first, so that Triton's ready endpoint
    answering means every front serves."""
    from .triton_front import TritonFront

    fronts = [TritonFront(args.host, args.http_port, args.grpc_port, args.metrics_port, args.drain_timeout,
                          args.instances, args.verbose)]
    if args.openai_port is not None:
        from .openai_front import OpenAIFront

        if not args.tokenizer_dir:
            raise ValueError("--openai_port needs --tokenizer_dir (the OpenAI API takes and answers text)")
        fronts.insert(0, OpenAIFront(args.host, args.openai_port, args.served_model_name or args.engine_dir,
                                     args.drain_timeout, args.verbose))
    return fronts


def serve(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    signals = Signals().install()
    die_with_parent()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <rank pid>: print every thread's stack
    try:
        device, comm = setup(args.device, args.threads, args.comm, args.plugin_transport)
    except (ValueError, PluginLibraryError) as e:  # the same on every rank
        print(f"error: {e}", file=sys.stderr)
        return 2

    def start():
        from ..formats import read_rank_config
        from ..runtime.engine import TrackEngine

        if args.max_batch_size < 1:
            raise ValueError(f"--max_batch_size must be >= 1, got {args.max_batch_size}")
        max_len = args.max_seq_len or min(read_rank_config(args.engine_dir)[0].max_position_embeddings, 4096)
        engine = TrackEngine(args.engine_dir, comm, device, max_batch=args.max_batch_size, max_len=max_len,
                             cuda_graphs=not args.no_cuda_graphs, kv_buckets=args.kv_buckets)
        if args.max_seq_len is not None and args.max_seq_len > engine.max_len:
            raise ValueError(f"--max_seq_len {args.max_seq_len} exceeds max_position_embeddings {engine.max_len}")
        schedule = check_schedule(args.schedule or engine.cfg.merge_schedule, "server", engine.cfg)
        max_output = args.max_output_len or engine.max_len - 1
        if not 1 <= max_output < engine.max_len:
            raise ValueError(f"--max_output_len must be in [1, {engine.max_len - 1}], got {max_output}")
        tokenizer, fronts = None, []
        if comm.rank == 0:
            tokenizer = load_tokenizer(args.tokenizer_dir)
            fronts = _fronts(args)
            for front in fronts:
                front.check()
            if args.stats_json:
                _check_writable(args.stats_json)
        return engine, schedule, tokenizer, max_output, fronts

    engine, schedule, tokenizer, max_output, fronts = start_on_all_ranks(comm, start, (ValueError, CheckpointError))
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
    return _serve_rank0(args, engine, comm, channel, schedule, tokenizer, max_output, signals, fronts)


def _check_writable(path: str) -> None:
    try:
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--stats_json {path}: cannot write there ({e.strerror})") from None


def _serve_rank0(args, engine, comm, channel, schedule, tokenizer, max_output, signals, fronts) -> int:
    from .front import Backend
    from .plan import StepPlan
    from .requests import Limits
    from .scheduler import Scheduler
    from .stats import stopped_line

    limits = Limits(engine.cfg.vocab_size, engine.max_len, max_output,
                    frozenset(end_ids(None, engine.cfg.eos_token_id, tokenizer)))
    comm.reset_counts()  # count what serving does, not the warm-up
    watch = _FrontWatch(fronts)
    scheduler = Scheduler(engine, channel, schedule, args.max_prefill_tokens, idle_check=watch.alive)
    signals.on_signal = lambda: scheduler.stop(args.drain_timeout)

    def finish(stopped_by: str, code: int, stopped: bool = True) -> int:
        """Record why the server stopped, write --stats_json, and exit with `code`."""
        scheduler.stats.stopped_by = stopped_by
        if args.stats_json:
            write_atomic(args.stats_json, scheduler.stats.to_json().encode())
        if not stopped:  # PyTriton's atexit handler would wait for tritonserver again
            sys.stderr.flush()
            os._exit(code)
        return code

    if signals.received is not None:  # stopped while loading: do not start the fronts
        channel.send(StepPlan(stop=True))
        return finish(signal.Signals(signals.received).name, 0)
    failure, started = None, []
    try:
        for front in fronts:
            started.append(front)
            front.start(Backend(scheduler, tokenizer, limits), signals.interruptible)
    except Interrupted:
        failure = "stopped by a signal while starting"
    except Exception as e:  # noqa: BLE001 - report, stop the followers, exit
        failure = f"error: cannot start {started[-1].what}: {e.__class__.__name__}: {e}"
    if failure is not None:
        print(failure, file=sys.stderr, flush=True)
        channel.send(StepPlan(stop=True))
        stopped = all([front.stop(10.0) for front in started])
        return finish(failure, 0 if signals.received is not None else 1, stopped)

    done = threading.Event()
    threading.Thread(target=_watchdog, args=(scheduler, comm, args.step_timeout, done), daemon=True).start()
    print(f"serving {'; '.join(f.endpoints() for f in fronts)} | {comm.world_size} ranks "
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
    died = signals.received is None  # the scheduler stopped because a front is gone
    stopped = all([front.stop(args.drain_timeout + 20) for front in fronts])
    scheduler.stats.stopped_by = watch.dead.gone if died else signal.Signals(signals.received).name
    print(stopped_line(scheduler.stats.snapshot()), flush=True)
    return finish(scheduler.stats.stopped_by, 1 if died or not stopped else 0, stopped)


class _FrontWatch:
    """The scheduler's idle check: every front alive, asked at most once a second; remembers the
    first front found dead."""

    def __init__(self, fronts):
        self.fronts, self.checked, self.dead = fronts, float("-inf"), None

    def alive(self) -> bool:
        if time.monotonic() - self.checked < 1.0:
            return True
        self.checked = time.monotonic()
        self.dead = next((f for f in self.fronts if not f.alive()), None)
        return self.dead is None


def _watchdog(scheduler, comm, timeout: float, done: threading.Event) -> None:
    while not done.wait(1.0):
        started = scheduler.step_started
        if started is not None and time.perf_counter() - started > timeout:
            print(f"error: a step has not finished in {timeout:.0f} s: a rank died or hung; aborting every rank",
                  file=sys.stderr, flush=True)
            comm.abort(1)


def main(argv=None) -> int:
    return serve(parse_args(argv))
