"""Checkpoints: find (preset, path or URL), download with hash check, read safely, load strictly.

Accepted layouts: the published mmpose 0.x files (``keypoint_head.*``), mmpose 1.x files
(``head.*``), either wrapped as ``{'state_dict': ..., 'meta': ...}`` or bare, with or without the
``module.`` prefix of DDP; and nextpose's own files, which also carry their :class:`Config`.
"""

import contextlib
import hashlib
import http.client
import os
import pickle
import pickletools
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

# mmpose files are named "<name>-<first 8 hex digits of sha256>_<date>.pth".
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})(?:_\d{8})?\.pth?$")


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$NEXTPOSE_CACHE`` or ``<torch hub dir>/checkpoints``."""
    env = os.environ.get("NEXTPOSE_CACHE")
    return Path(env) if env else Path(torch.hub.get_dir()) / "checkpoints"


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


LOCAL_FILE_HINT = "--checkpoint PATH in the CLI, or nextpose.load(..., checkpoint=PATH)"


def download(
    url: str,
    directory: Path | None = None,
    progress: bool = True,
    local_file_hint: str = LOCAL_FILE_HINT,
) -> Path:
    """Fetch ``url`` into the cache (once) and return the local path.

    The file is written to a temporary name and renamed when complete, so an interrupted download
    never leaves a file that looks finished. When the file name carries a sha256 prefix, both a
    fresh download and an already cached file are checked against it; without one, a cached
    file that is not a complete zip archive (the format of ``torch.save``) is fetched again.
    """
    directory = Path(directory) if directory else cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointError(f"{url}: the URL does not end in a file name")
    target = directory / name
    expected = hash_prefix(name)
    if target.is_file():
        if expected is not None:
            intact = sha256_of(target).startswith(expected)
        else:
            intact = _complete_zip(target)
        if intact:
            return target
        target.unlink()  # a corrupt or partial cached copy: fetch it again
    directory.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub announces downloads on standard output, which may carry a command's results.
        with contextlib.redirect_stdout(sys.stderr):
            torch.hub.download_url_to_file(url, str(target), expected, progress=progress)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(
            f"could not download {url} ({reason}). Without network access, fetch the file on "
            f"another machine and pass its local path ({local_file_hint}), or copy it to "
            f"{target}"
        ) from None
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise CheckpointError(
                f"{url}: downloaded file does not match the sha256 prefix '{expected}' in its name "
                f"({e}); it was discarded"
            ) from None
        raise
    if expected is None and not _complete_zip(target):  # a server that stopped sending early
        target.unlink()
        raise CheckpointError(f"{url}: the download is incomplete; it was discarded (try again)")
    return target


def _complete_zip(path: Path) -> bool:
    """False for a cut-off zip archive (the format of ``torch.save``, whose directory is at the
    end); True for a whole one, or another format (which cannot be checked without a hash)."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    return not is_zip or zipfile.is_zipfile(path)


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
    """Load a checkpoint file without executing any code in it (``weights_only``).

    Raises:
        CheckpointError: the file is missing, damaged, not from ``torch.save``, holds pickled
            objects that could run code (refused, never run), or is not a dict.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it parses fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
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
        problem = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = problem.group(1) if problem else f"{type(e).__name__}: {e}"
        if path.is_file() and path.stat().st_size == 0:
            reason = "the file is empty"
        cached = path.resolve().parent == cache_dir().resolve()
        hint = "; delete it to download it again" if cached else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt? {reason}); nothing "
            f"in it was executed{hint}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
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


def extract_state_dict(obj: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """The model weights of a checkpoint, renamed to nextpose's keys (§5.4)."""
    state = obj.get("state_dict", obj)
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

    Args:
        model: the network to fill.
        obj: what :func:`read` returned.
        source: the file or URL, for messages.
        expected: the preset or config the model was built from, for messages.
    """
    state = extract_state_dict(obj)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
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
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        more = f" ... ({len(broken)} in all)" if len(broken) > 5 else ""
        raise CheckpointError(
            f"{source}: the checkpoint's weights hold NaN or inf in {', '.join(broken[:5])}{more}"
            " (saved from a diverged training run?)"
        )
    model.load_state_dict(state, strict=True)


def save_model(path: str | Path, model: nn.Module, config: Any, **meta: Any) -> None:
    """Write a self-describing weights file: the state dict, the :class:`Config`, and ``meta``."""
    save(path, {"state_dict": model.state_dict(), "config": config.to_dict(), "meta": meta})


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with torch.save atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
