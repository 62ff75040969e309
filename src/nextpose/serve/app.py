"""The HTTP service: an ASGI app (FastAPI) in front of a :class:`~.batcher.Batcher`, and
:func:`serve`, which runs it with uvicorn until SIGTERM or Ctrl-C.

Endpoints:

* ``POST /v1/poses``: an image (a multipart upload field ``image``, or the raw request body) and
  optional fields or query parameters ``boxes`` (JSON ``[[x1, y1, x2, y2, score?], ...]``,
  image pixels), ``bbox_format`` (xyxy, xywh), ``flip``, ``decode`` (msra, dark),
  ``score_threshold``, ``format``
  (nextpose, coco), ``name``, ``image_id`` -> the JSON records ``nextpose predict`` writes;
* ``GET /healthz``, ``GET /v1/models`` (the model and how it runs), ``GET /v1/stats`` (batches);
* ``GET /``: a web page that draws the poses of an image or the webcam.

A bad request gets a 4xx answer ``{"error": message, "status": code}``; nothing a client sends
raises out of a handler or stops the engine.
"""

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from typing import Any

import numpy as np

from ..boxes import BOX_FORMATS, as_boxes, outside_image
from ..config import DECODINGS
from ..data.coco import are_json_numbers
from ..data.images import decode_image
from ..engine import Detector
from ..errors import (
    ImageError,
    ImageTooLargeError,
    InputError,
    NextposeError,
    NumericsError,
    ServiceBusyError,
    require,
)
from ..predictor import PoseEstimator
from ..structures import Frame, Poses
from .batcher import Batcher

log = logging.getLogger("nextpose")
DECODES = 2  # images decoded at the same time, at most
CLOSE = {"Connection": "close"}  # a body left unread: the connection cannot carry another request
# A body over --max-body-mb is still read and dropped up to these bounds before the 413 (as a
# web server's lingering close); past them the connection is closed, the client may see a reset.
DRAIN_BYTES, DRAIN_SECONDS = 64 * 2**20, 10.0

FIELDS = (
    "image", "boxes", "bbox_format", "flip", "decode", "score_threshold", "format", "name",
    "image_id",
)  # fmt: skip
FORMATS = ("nextpose", "coco")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only, and within int64


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``message``, never raised further."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _status(error: NextposeError) -> int:
    """The HTTP status of a library error about a request's content."""
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, ImageError):
        return 415  # not an image OpenCV can decode
    return 422  # boxes, options, non-finite heatmaps: understood but not processable


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise RequestError(422, f"{name} must be true or false, not {text!r}")


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RequestError(422, f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise RequestError(422, f"{name} must be a finite number, not {text!r}")
    return value


def parse_boxes(
    text: str, shape: tuple[int, ...], name: str, bbox_format: str, max_boxes: int = 100
) -> np.ndarray:
    """(N, 5) xyxy + score boxes from the request's JSON ``boxes``; refuses bad JSON (400),
    bad shapes or numbers, more than ``max_boxes`` boxes and boxes entirely outside the image
    (422)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is one
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise RequestError(400, f"boxes: not valid JSON ({reason})") from None
    shape_help = "boxes must be a JSON list of boxes [[x1, y1, x2, y2, score?], ...]"
    if not isinstance(value, list):
        raise RequestError(422, shape_help)
    if len(value) > max_boxes:
        raise RequestError(
            422, f"{len(value)} boxes: at most {max_boxes} per request (--max-boxes)"
        )
    for i, box in enumerate(value):
        if not (isinstance(box, list) and len(box) in (4, 5) and are_json_numbers(box)):
            given = json.dumps(box)
            given = given if len(given) <= 80 else given[:77] + "..."
            raise RequestError(
                422,
                f"{shape_help}: box {i} {given} is not 4 or 5 numbers (finite, in float32 range)",
            )
    value = [box if len(box) == 5 else [*box, 1.0] for box in value]  # a missing score is 1
    source = f"{name}: boxes"
    try:
        boxes = as_boxes(value, shape, source, bbox_format, warn_outside=False)  # type: ignore[arg-type]
    except NextposeError as e:
        raise RequestError(422, str(e)) from None
    outside = outside_image(boxes, shape)
    if len(outside):
        h, w = shape[:2]
        i = int(outside[0])
        raise RequestError(
            422,
            f"{source}: box {i} {boxes[i, :4].tolist()} lies entirely outside the {w} x {h} image",
        )
    return boxes


def records(
    poses: Poses,
    image: np.ndarray,
    name: str,
    image_id: int,
    coco: bool,
    score_threshold: float | None,
) -> list[dict[str, Any]]:
    """What ``nextpose predict`` writes for this image (``--format coco`` when ``coco``); with
    ``score_threshold`` each record also says which keypoints score above it (``visible``)."""
    frame = Frame(0, name, image_id, poses, image)
    out = frame.to_coco() if coco else frame.to_records()
    if score_threshold is not None:
        for record, scores in zip(out, poses.scores, strict=True):
            record["visible"] = [bool(s > score_threshold) for s in scores]
    return out


def model_info(estimator: PoseEstimator, batcher: Batcher, detector: Detector | None) -> dict:
    """What ``GET /v1/models`` lists for the model."""
    o, kset = estimator.options, estimator.keypoint_set
    w, h = estimator.input_size
    return {
        "name": estimator.name,
        "input_size": {"width": w, "height": h},
        "keypoints": list(kset.names),
        "skeleton": [list(p) for p in kset.skeleton],
        "flip_indices": list(kset.flip_indices),
        "decode": estimator.config.inference.decode,
        "backend": o.backend,
        "precision": o.precision,
        "device": o.device,
        "detector": getattr(detector, "name", None) if detector is not None else None,
        "max_batch": batcher.engine.options.batch_size,
        "max_wait_ms": batcher.max_wait * 1000,
    }


@dataclass(frozen=True)
class _Options:
    """What a request's text fields ask for (``FIELDS`` but the image and its boxes)."""

    name: str
    image_id: int
    bbox_format: str
    format: str
    flip: bool
    decode: str | None
    score_threshold: float | None

    @classmethod
    def of(
        cls, data: bytes, fields: dict[str, str], filename: str | None, flip: bool
    ) -> "_Options":
        """The options of a request with image bytes ``data`` and ``fields`` (400 without an
        image, 422 for a bad field), ``flip`` where it does not say; the name defaults to the
        upload's file name, the image id to a name's integer stem."""
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise RequestError(422, f"unknown fields {unknown}; choose from {list(FIELDS)}")
        name = fields.get("name") or (PurePath(filename).name if filename else "image")
        if not data:
            raise RequestError(400, "no image: send it as the body or a multipart field 'image'")
        bbox_format = fields.get("bbox_format", "xyxy")
        if bbox_format not in BOX_FORMATS:
            raise RequestError(422, f"bbox_format must be one of {list(BOX_FORMATS)}")
        out_format = fields.get("format", "nextpose")
        if out_format not in FORMATS:
            raise RequestError(422, f"format must be one of {list(FORMATS)}, not {out_format!r}")
        decode = fields.get("decode")
        if decode is not None and decode not in DECODINGS:
            raise RequestError(422, f"decode must be one of {list(DECODINGS)}, not {decode!r}")
        threshold = fields.get("score_threshold")
        stem = PurePath(name).stem
        image_id = int(stem) if _INTEGER.fullmatch(stem) and stem[0] != "-" else 0
        if "image_id" in fields:
            text = fields["image_id"].strip()
            if not _INTEGER.fullmatch(text):
                raise RequestError(
                    422, f"image_id must be an integer of at most 18 digits, not {text[:40]!r}"
                )
            image_id = int(text)
        return cls(
            name,
            image_id,
            bbox_format,
            out_format,
            _flag("flip", fields["flip"]) if "flip" in fields else flip,
            decode,
            None if threshold is None else _number("score_threshold", threshold),
        )


async def _drain(request: Any, timeout: float) -> None:
    """Read and drop what the client still sends, within bounds: closing on unread bytes
    resets the connection, and a client that sends its whole body before reading its answer
    (most do) would see the reset, not the 413."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(min(timeout, DRAIN_SECONDS)):
            dropped = 0
            while dropped <= DRAIN_BYTES:
                message = await request.receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    break  # the body's end, or the client gone
                dropped += len(message.get("body", b""))


async def _disconnected(request: Any) -> None:
    """Return when the client closes its connection (its body is read: nothing else comes on
    the ASGI channel until then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Any, max_body: int, timeout: float) -> bytes:
    """The request's body: 413 over ``max_body`` bytes, 408 if it takes over ``timeout``
    seconds to arrive."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        await _drain(request, timeout)
        raise RequestError(413, f"the request body ({declared} bytes) is larger than the "
                           f"limit of {max_body} bytes (--max-body-mb)", CLOSE)  # fmt: skip
    parts, size, more = [], 0, True

    async def read() -> None:  # from the ASGI channel, to know whether more is coming
        nonlocal size, more
        while more and size <= max_body:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            more = message.get("more_body", False)

    try:  # a client that stops sending mid-body would hold its connection for ever
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RequestError(
            408, f"the request body did not arrive within {timeout:g} s (--timeout)", CLOSE
        ) from None
    except ClientDisconnect:  # nobody to answer: not an error of the service
        raise RequestError(400, "the client disconnected before its body arrived") from None
    if size > max_body:
        parts.clear()
        if more:
            await _drain(request, timeout)
        raise RequestError(413, f"the request body is larger than the limit of {max_body} "
                           "bytes (--max-body-mb)", CLOSE)  # fmt: skip
    return b"".join(parts)


async def _fields(request: Any, body: bytes) -> tuple[bytes, dict[str, str], str | None]:
    """(image bytes, text fields, uploaded file name) of a multipart or raw request."""
    from starlette.formparsers import MultiPartParser

    fields: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in fields:
            raise RequestError(422, f"query parameter {key!r} is given twice")
        fields[key] = value
    kind = request.headers.get("content-type", "").lower()  # media types ignore case
    if not kind.startswith("multipart/form-data"):
        return body, fields, None

    async def stream():
        yield body

    try:  # files: as many as fields, so that a field sent as a file is named below
        form = await MultiPartParser(
            request.headers, stream(), max_files=len(FIELDS), max_fields=len(FIELDS),
            max_part_size=2**20,
        ).parse()  # fmt: skip
    except Exception as e:  # starlette's MultiPartException, or a malformed body
        raise RequestError(400, f"not a valid multipart/form-data body: {e}") from None
    try:
        upload, given = None, set()
        for key, value in form.multi_items():
            if key in given:
                raise RequestError(422, f"field {key!r} is given twice")
            if key in fields:
                raise RequestError(
                    422, f"field {key!r} is given both as a query parameter and a form field"
                )
            given.add(key)
            if key == "image":
                upload = value
            elif not isinstance(value, str):
                raise RequestError(422, f"field {key!r} must be text, not a file")
            else:
                fields[key] = value
        if upload is None or isinstance(upload, str):
            raise RequestError(422, "a multipart request needs the image as a file field 'image'")
        return await upload.read(), fields, upload.filename
    finally:
        await form.close()  # the uploads' temporary files


def create_app(
    estimator: PoseEstimator,
    detector: Detector | None = None,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    timeout: float = 30.0,
    max_body_mb: float = 32.0,
    max_boxes: int = 100,
    flip: bool = True,
) -> Any:
    """The FastAPI app serving ``estimator`` (see the module doc); its batcher starts with the
    app and is closed, after the requests in flight, when the app shuts down.

    Args:
        max_batch, max_wait_ms, max_queue: the batcher's (crops, milliseconds, requests).
        timeout: seconds a request's body may take to arrive (then 408), and that it may
            wait for its poses (then 504).
        max_body_mb: largest request body, MiB (then 413).
        max_boxes: most boxes one request may give (then 422): one request's crops run
            before the next request's, so this bounds how long it can hold the others up.
        flip: the flip test of requests that do not say.
    """
    fastapi = require("fastapi", "serve", "nextpose serve")
    responses = require("fastapi.responses", "serve", "nextpose serve")
    require("starlette.formparsers", "serve", "nextpose serve", load=False)
    # python-multipart, for uploads: starlette imports it (under either of its names)
    require("multipart", "serve", "nextpose serve", load=False)
    concurrency = require("starlette.concurrency", "serve", "nextpose serve")
    exceptions = require("starlette.exceptions", "serve", "nextpose serve")
    JSONResponse, Request = responses.JSONResponse, fastapi.Request

    batcher = Batcher(estimator, detector, max_batch, max_wait_ms / 1000, max_queue)
    late = f"no answer within {timeout:g} s (the service is overloaded; --timeout)"
    # Decoding is CPU work, and an image just under the pixel limit takes ~1.6 GB while it is
    # decoded: two at a time keep the memory bounded and still outpace the network.
    decoding = asyncio.Semaphore(DECODES)
    max_body = int(max_body_mb * 2**20)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        await asyncio.get_running_loop().run_in_executor(None, batcher.close, timeout)

    app = fastapi.FastAPI(
        title="nextpose", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.batcher = batcher

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": message, "status": status}, status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Any, e: RequestError) -> Any:
        return error(e.status, e.message, e.headers)

    @app.exception_handler(exceptions.HTTPException)  # 404, 405 in the same shape
    async def http_error(request: Any, e: Any) -> Any:
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.api_route("/", methods=["GET", "HEAD"], response_class=responses.HTMLResponse)
    async def index() -> Any:
        return responses.HTMLResponse(page)

    taken = 0  # requests being received, decoded or waiting for their poses (this loop's)

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: load balancers, curl -I
    async def healthz() -> dict:
        return {"status": "ok", "waiting": taken}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"models": [model_info(estimator, batcher, detector)]}

    @app.get("/v1/stats")
    async def stats() -> dict:
        queued = batcher.stats()
        return {**queued, "waiting": taken, "queued": queued["waiting"]}

    @app.post("/v1/poses")
    async def poses(request: Request) -> Any:
        nonlocal taken
        # Counted from its first byte: each holds its body, then its image, till it is answered.
        if taken >= max_queue:
            await _drain(request, timeout)
            raise RequestError(
                503, f"{taken} requests are being received or waiting, as many as the service "
                f"takes (--max-queue {max_queue}); try again shortly",
                {"Retry-After": "1", **CLOSE},
            )  # fmt: skip
        taken += 1
        try:
            return await estimate(request)
        except asyncio.CancelledError:  # the server stops at once (a second Ctrl-C)
            raise RequestError(503, "the service stopped before answering", CLOSE) from None
        finally:
            taken -= 1

    async def estimate(request: Request) -> Any:
        """The poses of one request (the handler's work once the request is counted)."""
        deadline = asyncio.get_running_loop().time() + timeout  # the body's, then the answer's
        body = await _read_body(request, max_body, timeout)
        data, fields, filename = await _fields(request, body)
        del body  # a multipart body's image is in ``data``: one copy while it is decoded
        o = _Options.of(data, fields, filename, flip)
        name = o.name
        try:  # the wait for a decoder counts against the request's time; a decode runs to its end
            async with asyncio.timeout_at(deadline):
                await decoding.acquire()
        except TimeoutError:
            raise RequestError(504, late) from None
        try:
            image = await concurrency.run_in_threadpool(decode_image, data, name)
        except NextposeError as e:
            raise RequestError(_status(e), str(e)) from None
        finally:
            decoding.release()
        boxes = None
        if "boxes" in fields:
            boxes = parse_boxes(fields["boxes"], image.shape, name, o.bbox_format, max_boxes)
        try:
            future = batcher.submit(image, boxes, o.flip, name, o.decode)
        except ServiceBusyError as e:
            raise RequestError(503, str(e), {"Retry-After": "1"}) from None
        answer = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise RequestError(504, late) from None
        finally:
            gone.cancel()
            answer.cancel()  # if not answered: the batcher skips its crops if still queued
        if answer.cancelled():  # nobody reads an answer now; uvicorn drops it
            raise RequestError(400, "the client disconnected before its answer")
        try:
            result = answer.result()
        except (InputError, ImageError, NumericsError) as e:  # a decoded image: 422, not 415
            raise RequestError(413 if isinstance(e, ImageTooLargeError) else 422, str(e)) from None
        return records(result, image, name, o.image_id, o.format == "coco", o.score_threshold)

    return app


class _ForcedExit(logging.Filter):
    """Drops uvicorn's tracebacks of the tasks it cancels when told to stop at once (a second
    Ctrl-C): a stop asked for, not an error; one line says what it left."""

    def __init__(self, server: Any):
        super().__init__()
        self.server = server
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.server.force_exit:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, asyncio.CancelledError) or "CancelledError" in record.getMessage():
            if not self.said:
                self.said = True
                log.warning("stopped at once: the requests in flight were answered 503")
            return False
        return True


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str = "127.0.0.1", port: int = 8000) -> list[socket.socket]:
    """TCP sockets bound to every address of ``host`` (``localhost``: IPv6 and IPv4) at
    ``port``, not listening yet (connections are refused until :func:`serve` runs), so that a
    port in use is reported before a model is loaded.

    Raises:
        InputError: the address cannot be had (in use, not this machine's, unknown name).
    """
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InputError(f"--host {host}: {e.strerror}") from None
    addresses = list(dict.fromkeys((family, address) for family, *_, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            if family == socket.AF_INET6 and len(addresses) > 1:  # as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise InputError(f"cannot serve on {_where(name, port)}: {e.strerror or e}") from None
    return sockets


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    timeout: float = 30.0,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run ``app`` with uvicorn on ``sockets`` (from :func:`bind`; None: bind ``host``:``port``
    now) until SIGTERM or Ctrl-C; the requests in flight are answered (for at most
    ``timeout`` seconds) before it stops.

    Raises:
        InputError: the port was taken meanwhile (another server started listening on it).
    """
    uvicorn = require("uvicorn", "serve", "nextpose serve")
    sockets = sockets if sockets is not None else bind(host, port)
    for sock in sockets:
        try:
            sock.listen(2048)  # uvicorn's backlog
        except OSError as e:
            host, port = sock.getsockname()[:2]
            raise InputError(f"cannot serve on {_where(host, port)}: {e.strerror or e}") from None
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=max(1, math.ceil(timeout))
    )
    server = uvicorn.Server(config)
    quiet, uvicorn_log = _ForcedExit(server), logging.getLogger("uvicorn.error")
    where = ", ".join(f"http://{_where(*s.getsockname()[:2])}/" for s in sockets)
    log.info(f"serving on {where} (the web page; POST /v1/poses); Ctrl-C stops")
    uvicorn_log.addFilter(quiet)
    try:
        server.run(sockets=sockets)
    finally:
        uvicorn_log.removeFilter(quiet)
