"""``nextpose serve``: the pose model behind an HTTP endpoint, with a web page."""

import argparse
import sys

from ._options import (
    add_detector,
    add_model,
    add_runtime,
    check_detector,
    check_device,
    check_extras,
    count,
    load_detector_of,
    note_ignored,
    number,
    run_options,
)


def host(text: str) -> str:
    """An argparse type: a host name or address to listen on (not empty: that would be every
    interface, which is asked for as 0.0.0.0)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty host would listen on every interface; give "
                                         "0.0.0.0 for that, or an address")  # fmt: skip
    return text


def port(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    value = count(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP (POST /v1/poses) with a web page, batching requests",
        description="POST an image (multipart field 'image', or the raw body) to /v1/poses, "
        "with optional fields boxes (JSON), bbox_format, flip, decode, score_threshold, "
        "format, name, image_id: the records `nextpose "
        "predict` writes. The crops of concurrent requests go through the network together. "
        'Needs pip install "nextpose[serve]".',
    )
    add_model(p)
    add_detector(p)
    add_runtime(
        p,
        batch_flags=("--max-batch", "--batch-size"),
        batch_help="crops per network batch, from all waiting requests, at most (default 32)",
        threads=False,
    )
    p.add_argument(
        "--host",
        type=host,
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=port, default=8000, help="port, 1-65535 (default 8000)")
    p.add_argument(
        "--max-wait-ms",
        type=number,
        default=5.0,
        metavar="T",
        help="a batch that is not full runs when its first crop has waited this long (default 5)",
    )
    p.add_argument(
        "--max-queue",
        type=count(1),
        default=256,
        metavar="N",
        help="requests taken at a time (being received, decoded or waiting for their poses); "
        "more are answered 503 with Retry-After (default 256)",
    )
    p.add_argument(
        "--timeout",
        type=number,
        default=30.0,
        metavar="S",
        help="seconds a request's body may take to arrive (then 408) and to wait for its poses "
        "(then 504), and for the requests in flight when the service stops (default 30)",
    )
    p.add_argument(
        "--max-body-mb",
        type=number,
        default=32.0,
        metavar="MB",
        help="largest request body in MiB (then 413; default 32)",
    )
    p.add_argument(
        "--max-boxes",
        type=count(1),
        default=100,
        metavar="N",
        help="most boxes one request may give (then 422; default 100)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError, require
    from ..predictor import load

    for name in ("fastapi", "uvicorn", "multipart"):  # multipart: found, not imported
        require(name, "serve", "nextpose serve", load=name != "multipart")
    if args.max_wait_ms < 0 or args.timeout < 0.1 or args.max_body_mb * 2**20 < 1024:
        # smaller ones start a service that answers every request 413 or 504
        raise InputError(
            "--max-wait-ms must be >= 0, --timeout at least 0.1 s, --max-body-mb at least "
            f"1 KiB (0.001), not {args.max_wait_ms:g}, {args.timeout:g}, {args.max_body_mb:g}"
        )
    if args.timeout > 86400 or args.max_wait_ms > 60000:
        raise InputError("--timeout must be at most 86400 s, --max-wait-ms at most 60000")
    check_detector(args)
    note_ignored(args)
    check_device(args.device)
    check_extras(args)
    from ..serve import create_app, serve
    from ..serve.app import bind

    sockets = bind(args.host, args.port)  # a port in use is said now, not after the model loads
    try:
        estimator = load(args.model, args.checkpoint, **run_options(args))
        detector = load_detector_of(args)
        # Before the port opens: no request waits for a compile or an export, and /healthz
        # answers only once the network is ready.
        seconds = estimator.warm_up()  # both flip settings: a request may ask for either
        ready = f"network ready ({estimator.backend}) in {seconds:.1f} s"
        print(ready, file=sys.stderr, flush=True)
        app = create_app(
            estimator,
            detector,
            max_batch=args.batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            timeout=args.timeout,
            max_body_mb=args.max_body_mb,
            max_boxes=args.max_boxes,
            flip=not args.no_flip,
        )
        serve(app, timeout=args.timeout, sockets=sockets)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn answered what was in flight, then re-raised it
        print("\nstopped", file=sys.stderr)
        return 130
    finally:
        for sock in sockets:
            sock.close()
    return 0
