"""Checkpoints: find (preset, path or URL), download with hash check, read safely, load strictly.

Accepted layouts: the published mmpose 0.x files (``keypoint_head.*``), mmpose 1.x files
(``head.*``), either wrapped as ``{'state_dict': ..., 'meta': ...}`` or bare, with or without the
``module.`` prefix of DDP; nextpose's own files, which also carry their :class:`Config`; and
``.safetensors`` files (weights only; a nextpose config, if any, in their metadata as JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import math
import os
import pickle
import pickletools
import re
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._version import __version__
from .config import Config
from .errors import CheckpointError
from .fileio import AtomicFile, atomic_write_text, cache_dir

if TYPE_CHECKING:  # torch is imported where a file is read or written, not to find one
    import torch
    from torch import nn

WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")  # what names a weights file
# mmpose files are named "<name>-<first 8 hex digits of sha256>_<date>.pth".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})(?:_\d{8})?\.(?:pth?|safetensors)$")

# Seconds to wait for a connection, and then for each block of data (NEXTPOSE_DOWNLOAD_TIMEOUT).
DEFAULT_DOWNLOAD_TIMEOUT = (15.0, 60.0)

# Keys of the safetensors metadata (a str -> str map) that nextpose writes and reads.
_ST_CONFIG = "nextpose.config"
_ST_META = "nextpose.meta"


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(str(source)).scheme in ("http", "https", "file", "ftp")


def hash_prefix(name: str) -> str | None:
    """The sha256 prefix embedded in a published file name, if any."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(digest: str) -> Path:
    return cache_dir() / "files" / f"{digest}.json"


def remember_file(digest: str, **facts: Any) -> None:
    """Keep ``facts`` about the checkpoint file with sha256 ``digest`` in the cache folder
    (``weights``: the :func:`weights_digest` of the model it loads into; ``config``: the
    config it carries), merged with those kept before, so that a later process can know them
    without reading the file (which needs torch). A cache folder that cannot be written is no
    error: the file is read again next time."""
    kept = {**(recalled_file(digest) or {}), **facts}
    with contextlib.suppress(OSError):
        atomic_write_text(_file_record(digest), json.dumps(kept, sort_keys=True))


def recalled_file(digest: str) -> dict[str, Any] | None:
    """What :func:`remember_file` kept about the file with sha256 ``digest``, or None (never
    kept, or unreadable: the file itself is read then)."""
    try:
        facts = json.loads(_file_record(digest).read_text())
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) else None


def weights_digest(model: nn.Module) -> str:
    """sha256 of ``model``'s state dict: names, dtypes, shapes and bytes."""
    import torch

    key = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        key.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        key.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return key.hexdigest()


LOCAL_FILE_HINT = "--checkpoint PATH in the CLI, or nextpose.load(..., checkpoint=PATH)"


# -- the download cache --------------------------------------------------------------------------


def cache_path(url: str, directory: str | Path | None = None) -> Path:
    """Where the download of ``url`` is kept: ``<cache>/<sha256(url)[:16]>/<file name>``.

    The folder is named by a hash of the whole URL, so two servers' ``model.pth`` are two entries;
    the file name inside is the URL's last path component, made safe (percent-decoded, then
    anything but letters, digits and ``._+-`` replaced by ``_``, leading dots dropped): it can
    never name a place outside its folder.

    Raises:
        CheckpointError: the URL does not end in a file name (``/``, ``/..``, ``/%2e%2e``).
    """
    directory = Path(directory) if directory else cache_dir()
    return directory / hashlib.sha256(url.encode()).hexdigest()[:16] / _file_name(url)


def _file_name(url: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    last = re.split(r"[/\\]", path)[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", last).lstrip(".")[-128:].lstrip(".")
    if not name:
        raise CheckpointError(f"{url}: the URL does not end in a file name")
    return name


def download_timeout() -> tuple[float, float]:
    """Seconds to wait for a connection and then for each block of data.

    From ``$NEXTPOSE_DOWNLOAD_TIMEOUT``: one number for both (``30``) or two (``10,120``);
    :data:`DEFAULT_DOWNLOAD_TIMEOUT` without it.
    """
    raw = os.environ.get("NEXTPOSE_DOWNLOAD_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        values = [float(part) for part in raw.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise CheckpointError(
            f"NEXTPOSE_DOWNLOAD_TIMEOUT={raw!r}: expected seconds > 0, one number for connecting "
            "and reading ('30') or two ('10,120')"
        )
    return values[0], values[-1]


def download(
    url: str,
    directory: Path | None = None,
    progress: bool = True,
    local_file_hint: str = LOCAL_FILE_HINT,
    timeout: float | tuple[float, float] | None = None,
) -> Path:
    """Fetch ``url`` into the cache (once) and return the local path (see :func:`cache_path`).

    The file is written to a temporary name in its cache folder and renamed when complete, so an
    interrupted download never leaves a file that looks finished. A download is discarded when
    it is shorter than the server announced, when the file name carries a sha256 prefix that it
    does not match, or when it is plainly not a checkpoint (a web page, a text file, a zip of
    other files). A cached file is checked again on every use: against the sha256 prefix when
    its name has one, else for being a complete zip archive (the format of ``torch.save``).

    Args:
        timeout: seconds to wait for the connection and then for each block of data, as one
            number or ``(connect, read)``; default :func:`download_timeout`.

    Raises:
        CheckpointError: naming the URL, for every failure (no network, timeout, HTTP error,
            hash mismatch, truncated or foreign content); nothing is kept in the cache then.
    """
    target = cache_path(url, directory)
    expected = hash_prefix(target.name)
    if target.is_file():
        intact = sha256_of(target).startswith(expected) if expected else _complete_zip(target)
        if intact:
            return target
        target.unlink()  # a corrupt or partial cached copy: fetch it again
    if timeout is None:
        timeout = download_timeout()
    elif not isinstance(timeout, tuple):
        timeout = (float(timeout), float(timeout))
    try:
        _fetch(url, target, expected, progress, timeout)
    except CheckpointError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        raise CheckpointError(_download_failure(url, e, timeout, target, local_file_hint)) from None
    return target


def _download_failure(
    url: str, error: BaseException, timeout: tuple[float, float], target: Path, hint: str
) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(error, urllib.error.HTTPError):
        what = f"HTTP error {error.code}: {error.reason}"
    elif isinstance(reason, TimeoutError):
        what = f"no connection within {timeout[0]:g} s"
    elif isinstance(error, TimeoutError):
        what = f"the server sent nothing for {timeout[1]:g} s"
    else:
        what = str(reason or error) or type(error).__name__
    old = target.parent.parent / target.name  # where earlier versions kept it (by name only)
    if old.is_file():
        hint += f"; a copy from an earlier download may be at {old}"
    timed_out = isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)
    if timed_out:
        retry = "Try again later (NEXTPOSE_DOWNLOAD_TIMEOUT=CONNECT,READ sets the limits, in s), or"
    elif isinstance(error, urllib.error.HTTPError):
        retry = "Check the URL, or"
    else:
        retry = "Without network access,"
    return (
        f"could not download {url} ({what}). {retry} fetch the file on another machine and "
        f"pass its local path ({hint}), or copy it to {target}"
    )


def _reading_timeout(base: type, seconds: float) -> type:
    """``base`` (an http.client connection class) switched to ``seconds`` once connected."""

    class Connection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(seconds)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self._connection = _reading_timeout(http.client.HTTPConnection, read_timeout)

    def http_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self._connection = _reading_timeout(http.client.HTTPSConnection, read_timeout)

    def https_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(self._connection, req, context=self._context)


def _fetch(
    url: str, target: Path, expected: str | None, progress: bool, timeout: tuple[float, float]
) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(_HTTPHandler(timeout[1]), _HTTPSHandler(timeout[1]))
    request = urllib.request.Request(url, headers={"User-Agent": f"nextpose/{__version__}"})
    digest, received = hashlib.sha256(), 0
    partial = AtomicFile(target, "wb", suffix=".partial")
    tmp = partial.tmp
    try:
        with opener.open(request, timeout=timeout[0]) as response, partial.file as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                print(f"Downloading {url} to {target}", file=sys.stderr)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and received < total:
            raise CheckpointError(
                f"{url}: the download is incomplete ({received} of {total} bytes); it was "
                "discarded (try again)"
            )
        foreign = _not_a_checkpoint(tmp)
        if foreign is not None:
            raise CheckpointError(
                f"{url}: the server sent {foreign}, not a checkpoint (an error or sign-in page, "
                "or a link to a web page rather than to the file?); it was discarded. Check the "
                "URL, or download the file yourself and pass its local path"
            )
        if expected is not None and not digest.hexdigest().startswith(expected):
            raise CheckpointError(
                f"{url}: downloaded file does not match the sha256 prefix '{expected}' in its "
                f"name (its sha256 is {digest.hexdigest()[:16]}...); it was discarded"
            )
        if expected is None and not _complete_zip(tmp):  # a server that stopped sending early
            raise CheckpointError(
                f"{url}: the download is incomplete; it was discarded (try again)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # a failed first download leaves no empty entry behind


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` and rename it to ``path``
    (:class:`~nextpose.fileio.AtomicFile`: synced, links written through, devices direct).
    A Ctrl-C meanwhile is taken once the file is complete (:func:`_ctrl_c_after`)."""
    with _ctrl_c_after(), AtomicFile(path, "wb") as out:
        stream = _Writes(out)
        try:
            write(stream)  # type: ignore[arg-type]
        except RuntimeError:
            if stream.error is not None:  # torch.save reports a failed write as its own error
                raise stream.error from None
            raise


class _Writes(io.RawIOBase):
    """A file's writes, keeping the OSError of one that failed (``error``): torch.save turns
    it into "unexpected pos" (a full disk would not be named as one)."""

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self.file, self.error = file, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise


@contextlib.contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """Hold back SIGINT until the block ends. ``torch.save`` turns a KeyboardInterrupt raised
    inside its writer into a RuntimeError about its stream ("unexpected pos"), which would be
    reported as a failed write; a checkpoint takes a second or two, so Ctrl-C waits for it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = signal.signal(signal.SIGINT, lambda *received: caught.append(received))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])  # Python's default handler: KeyboardInterrupt, now


def _complete_zip(path: Path) -> bool:
    """False for a cut-off zip archive (the format of ``torch.save``, whose directory is at the
    end); True for a whole one, or another format (which cannot be checked without a hash)."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    return not is_zip or zipfile.is_zipfile(path)


def _is_safetensors(head: bytes) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and a JSON
    object."""
    if len(head) < 10:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size < 100_000_000 and head[8:9] == b"{"


_MEDIA = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"), (b"\x1aE\xdf\xa3", "a Matroska / WebM video"),
    (b"%PDF", "a PDF document"),
)  # fmt: skip


def _not_a_checkpoint(path: Path) -> str | None:
    """What ``path`` is when it plainly is no weights file (``"an HTML page"``, ...); None when
    it may be one (a torch zip archive, a pickle, safetensors, or unknown binary data)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith("/data.pkl") for n in names):
                listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                return f"a zip archive of other files ({listed or 'empty'})"
        return None
    if head.startswith(b"\x80") or _is_safetensors(head):
        return None
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file (unpack it first)"
    for magic, kind in _MEDIA:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "a tar archive (unpack it first)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:256]:
        return "an HTML page"
    if text.startswith(b"<"):
        return "an XML or HTML document"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the end of the block
                return None
        return "a JSON document" if text.startswith((b"{", b"[")) else "a text file"
    return None


def resolve(source: str | Path, progress: bool = True) -> Path:
    """A local file for ``source``: a path as is, a URL downloaded to the cache."""
    if is_url(str(source)):
        return download(str(source), progress=progress)
    path = Path(source).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def read(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without executing any code in it.

    ``torch.save`` files are read with ``torch.load(weights_only=True)``; ``.safetensors`` files
    (recognised by their content, whatever their name) come back as ``{"state_dict": ...,
    "meta": {...}}`` plus ``"config"`` when their metadata carries a nextpose config.

    Raises:
        CheckpointError: the file is missing, damaged, not a weights file (an HTML page, a zip
            of other files...), holds pickled objects that could run code (refused, never run),
            is not a dict, or holds a ``state_dict`` that is not a dict of named tensors.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    torch_file = head.startswith((b"PK\x03\x04", b"\x80"))  # a zip archive or a pickle
    if _is_safetensors(head) or (path.suffix == ".safetensors" and not torch_file):
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    _weights_of(obj, str(path))  # a malformed state_dict is reported now, not as a traceback later
    return obj


def _read_torch(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it parses fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a damaged or foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the blocked callable
        blocked = found.group(1) if isinstance(e, pickle.UnpicklingError) and found else None
        if blocked is None and not zipfile.is_zipfile(path):
            # torch stops on protocol-4/5 opcodes before naming the callable: find it ourselves
            blocked = ", ".join(_foreign_globals(path)[:3]) or None
        if blocked:
            raise CheckpointError(
                f"{path}: refused to load: the file holds Python objects other than tensors and "
                f"plain data ({blocked}), and loading them could run code. Nothing in it "
                "was executed. Only weights files are accepted."
            ) from None
        foreign = _not_a_checkpoint(path)
        if foreign == "an empty file":
            reason = "truncated or corrupt? the file is empty"
        elif foreign is not None:
            reason = f"it is {foreign}, not weights saved by torch.save or safetensors"
        else:
            problem = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            found = problem.group(1) if problem else f"{type(e).__name__}: {e}"
            reason = f"truncated or corrupt? {found}"
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({reason}); nothing in it was "
            f"executed{_cached_hint(path)}"
        ) from None


def _cached_hint(path: Path) -> str:
    with contextlib.suppress(OSError):
        if cache_dir().resolve() in path.resolve().parents:
            return "; delete it to download it again"
    return ""


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = OrderedDict((key, f.get_tensor(key)) for key in f.keys())  # noqa: SIM118
    except Exception as e:  # the Rust reader fails in many ways on a damaged file
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt? {e}); nothing in it "
            f"was executed{_cached_hint(path)}"
        ) from None
    obj: dict[str, Any] = {"state_dict": state}
    for key, field in ((_ST_CONFIG, "config"), (_ST_META, "meta")):
        if key not in metadata:
            continue
        try:
            value = json.loads(metadata.pop(key))
        except (json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(
                f"{path}: the '{key}' entry of its metadata is not valid JSON ({e})"
            ) from None
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{path}: the '{key}' entry of its metadata is a JSON {type(value).__name__}, "
                "not an object"
            )
        obj[field] = value
    metadata.pop("format", None)
    obj["meta"] = {**metadata, **obj.get("meta", {})}  # other tools' metadata, as strings
    return obj


def _foreign_globals(path: Path) -> list[str]:
    """Callables other than torch's and ``collections``' named in a plain or legacy pickle file,
    found by reading its opcodes (:mod:`pickletools` parses; nothing is built or run)."""
    names: list[str] = []
    with contextlib.suppress(Exception), open(path, "rb") as file:
        while file.peek(1)[:1] == pickle.PROTO:  # each pickle of protocol >= 2 starts so
            pushed: list[object] = []  # per opcode, the string it pushed (None: no string)
            memo: dict[int, object] = {}
            for op, arg, _ in pickletools.genops(file):
                top = pushed[-1] if pushed else None
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                    names.append(f"{pushed[-2]}.{pushed[-1]}")
                if op.name == "MEMOIZE":  # memoizing leaves the stack as it is
                    memo[len(memo)] = top
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = top
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed.append(memo.get(int(arg)))
                else:
                    pushed.append(arg if isinstance(arg, str) else None)
    safe = ("torch.", "collections.OrderedDict", "_codecs.encode")
    dotted = re.compile(r"[A-Za-z_][\w.]*$")
    return list(dict.fromkeys(n for n in names if dotted.match(n) and not n.startswith(safe)))


def _weights_of(obj: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The mapping holding a checkpoint's weights, checked: a ``state_dict`` entry must map
    names (str) to tensors; a bare file must name its tensors by str and hold at least one."""
    import torch

    wrapped = "state_dict" in obj
    state = obj["state_dict"] if wrapped else obj
    where = "its 'state_dict'" if wrapped else "it"
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{source}: {where} is a {type(state).__name__}, not a dict of tensors (name -> tensor)"
        )
    named = [k for k, v in state.items() if wrapped or isinstance(v, torch.Tensor)]
    bad = [repr(k) for k in named if not isinstance(k, str)]
    if bad:
        raise CheckpointError(
            f"{source}: {where} has keys that are not parameter names (str): {_some(bad)}"
        )
    if wrapped:
        bad = [
            f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)
        ]
        if bad:
            raise CheckpointError(
                f"{source}: {where} holds values that are not tensors: {_some(bad)}"
            )
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: {where} holds no tensors (no weights)")
    return state


def _some(items: list[str], shown: int = 5) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def extract_state_dict(
    obj: dict[str, Any], source: str = "checkpoint"
) -> OrderedDict[str, torch.Tensor]:
    """The model weights of a checkpoint, renamed to nextpose's keys (§5.4).

    Raises:
        CheckpointError: naming ``source``, for a ``state_dict`` that is not a dict of named
            tensors (a list, integer keys, other values).
    """
    import torch

    state = _weights_of(obj, source)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("data_preprocessor."):
            continue
        if key.startswith("keypoint_head."):
            key = "head." + key[len("keypoint_head.") :]
        out[key] = value
    return out


def load_into(model: nn.Module, obj: dict[str, Any], source: str, expected: str) -> None:
    """Load checkpoint ``obj`` into ``model`` strictly, or explain the mismatch.

    Every weight of the model must be there with its shape (BatchNorm's ``num_batches_tracked``
    may be absent: 0), and no entry may name a layer of the model's modules that it does not
    have; entries outside them are skipped with a warning, as the reference skips them.

    Args:
        model: the network to fill; one built on the ``meta`` device gets the checkpoint's
            tensors (in its own dtypes) instead of copies.
        obj: what :func:`read` returned.
        source: the file or URL, for messages.
        expected: the preset or config the model was built from, for messages.
    """
    state = extract_state_dict(obj, source)
    own = model.state_dict()
    # BatchNorm's step counter is no weight (eval ignores it): files from before PyTorch 0.4.1
    # lack it, and load_state_dict fills it in as the reference's non-strict load does.
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    # Keys outside the model's own modules (an EMA copy, a loss's buffer, ...) are what the
    # reference's non-strict load skips with a warning; keys inside them mean another network.
    parts = {k.split(".", 1)[0] for k in own}
    unexpected = [k for k in state if k not in own and k.split(".", 1)[0] in parts]
    foreign = [k for k in state if k not in own and k.split(".", 1)[0] not in parts]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: the checkpoint does not fit model '{expected}'."]
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
        ):
            if keys:
                more = f" ... ({len(keys)} in all)" if len(keys) > 5 else ""
                lines.append(f"  {label}: {', '.join(keys[:5])}{more}")
        lines.append("  Is it a checkpoint for another architecture or input size?")
        raise CheckpointError("\n".join(lines))
    if foreign:
        warnings.warn(
            f"{source}: ignored {len(foreign)} checkpoint "
            f"{'entry' if len(foreign) == 1 else 'entries'} outside model '{expected}': "
            f"{_some(foreign)}",
            stacklevel=3,
        )
        state = OrderedDict((k, v) for k, v in state.items() if k in own)
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        more = f" ... ({len(broken)} in all)" if len(broken) > 5 else ""
        raise CheckpointError(
            f"{source}: the checkpoint's weights hold NaN or inf in {', '.join(broken[:5])}{more}"
            " (saved from a diverged training run?)"
        )
    if any(t.is_meta for t in own.values()):  # built without memory: take the loaded tensors
        state = {k: _owned(v.to(own[k].dtype)) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
    else:
        model.load_state_dict(state, strict=True)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is contiguous and alone in its storage, else a contiguous copy: a parameter
    taken from a checkpoint must not be a strided view or keep a larger buffer alive."""
    import torch

    whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
    if t.is_contiguous() and t.storage_offset() == 0 and whole:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def save_model(path: str | Path, model: nn.Module, config: Any, **meta: Any) -> None:
    """Write a self-describing weights file: the state dict, the :class:`Config`, and ``meta``."""
    save(path, {"state_dict": model.state_dict(), "config": config.to_dict(), "meta": meta})


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with torch.save atomically: a temp file in the same folder, then rename.

    The file gets the mode the umask gives, as any new file."""

    import torch

    _atomic_write(path, lambda f: torch.save(payload, f))


# -- safetensors ---------------------------------------------------------------------------------


def save_safetensors(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config_dict: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights as a ``.safetensors`` file, atomically (temp file, sync, rename).

    Args:
        path: the file to write (its folder is created).
        state_dict: names -> tensors (copied to the CPU, made contiguous).
        config_dict: a nextpose :meth:`Config.to_dict`, stored as JSON in the metadata, so that
            ``nextpose.load(path)`` needs no preset.
        meta: plain data stored as JSON in the metadata (what :func:`read` returns as ``meta``).

    Raises:
        CheckpointError: ``state_dict`` is not a dict of named tensors, or the config or meta
            cannot be written as JSON.
    """
    from safetensors.torch import save as serialize

    path = Path(path)
    _weights_of({"state_dict": state_dict}, str(path))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"format": "pt"}
    for key, value in ((_ST_CONFIG, config_dict), (_ST_META, meta)):
        if value is None:
            continue
        try:
            metadata[key] = json.dumps(dict(value), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot store {key} as JSON ({e})") from None
    _atomic_write(path, lambda f: f.write(serialize(tensors, metadata=metadata)))
    return path


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON data: non-finite numbers and other objects as strings."""
    if depth > 32:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Rewrite checkpoint ``src`` (any layout :func:`read` accepts, a path or URL) as the
    ``.safetensors`` file ``dst``, with nextpose's parameter names and, when ``src`` carries one,
    its config; returns ``dst``. Only the weights are kept (no optimizer or training state).

    Raises:
        CheckpointError: ``src`` cannot be read, holds no weights, carries an invalid config,
            or is the same file as ``dst``.
    """
    path = resolve(src)
    dst = Path(dst)
    if dst.exists() and dst.resolve() == path.resolve():
        raise CheckpointError(f"{dst}: the output is the input file; name another output")
    obj = read(path)
    state = extract_state_dict(obj, str(path))
    config = obj.get("config")
    if config is not None:
        try:
            config = Config.from_dict(config).to_dict()
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: the config it carries is invalid: {e}") from None
    meta = _plain(obj.get("meta")) if isinstance(obj.get("meta"), dict) else {}
    meta["converted_from"] = {"file": path.name, "sha256": sha256_of(path)}
    return save_safetensors(dst, state, config, meta)
