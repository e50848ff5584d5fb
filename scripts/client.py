#!/usr/bin/env python3
"""Query a PT model served by scripts/serve.py (Triton models `pt` and `pt_stream`).

  python scripts/client.py --url 127.0.0.1:8000 --text "The capital of France is" [--max_tokens 32]
      [--stream] [--protocol http|grpc] [--input_ids "1,2,3"] [--temperature F --top_k K --top_p P
      --seed S --end_id E] [--json]
  python scripts/client.py --url 127.0.0.1:8000 --stats

--url is host:port of the chosen protocol (HTTP 8000, gRPC 8001 by default). --stream prints the
tokens as they are generated (gRPC streaming; over HTTP through Triton's generate_stream). --stats
prints the server's statistics (model `pt_stats`) as JSON.
"""

import argparse
import json
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="127.0.0.1:8000", help="host:port (default 127.0.0.1:8000)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="prompt text (the server needs --tokenizer_dir)")
    src.add_argument("--input_ids", help='prompt token ids, "1,2,3"')
    src.add_argument("--stats", action="store_true", help="print the server's statistics (JSON) instead")
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--stream", action="store_true", help="print tokens as they arrive (model pt_stream)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top_k", type=int)
    p.add_argument("--top_p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--end_id", type=int, help="-1: ignore EOS")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tritonclient.utils import InferenceServerException

    from pt_trtllm.serve_tools.client import error_message, infer, request_inputs, server_stats, stream

    try:
        ids = [int(x) for x in args.input_ids.split(",") if x.strip()] if args.input_ids else None
    except ValueError:
        print(f"error: --input_ids {args.input_ids!r} is not a list like \"1,2,3\"", file=sys.stderr)
        return 2
    inputs = None if args.stats else request_inputs(args.text, ids, args.max_tokens, args.temperature, args.top_k,
                                                    args.top_p, args.seed, args.end_id)
    show = not args.json

    def on_chunk(chunk):
        if show:
            print(chunk["text"] if chunk["text"] is not None else " ".join(map(str, chunk["output_ids"])),
                  end="" if chunk["text"] is not None else " ", flush=True)

    try:
        if args.stats:
            print(json.dumps(server_stats(args.url, args.protocol, args.timeout), indent=1))
            return 0
        if args.stream:
            result = stream(args.url, inputs, args.protocol, args.timeout, on_chunk)
            if show:
                print()
        else:
            result = infer(args.url, inputs, args.protocol, args.timeout)
            if show:
                print(result.text if result.text is not None else " ".join(map(str, result.output_ids)))
    except InferenceServerException as e:
        print(f"error: {error_message(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - connection refused, timeouts, HTTP stream errors
        print(f"error: {e.__class__.__name__}: {error_message(e)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"output_ids": result.output_ids, "text": result.text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
