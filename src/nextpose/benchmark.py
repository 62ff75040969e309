"""Which backend to use on this machine: the backends and precisions timed side by side on a
model, with their keypoints compared to the plain fp32 model's (what ``nextpose benchmark``
prints).

The timing is of the network on crops (flip test and decoding included, as the engine calls
it), interleaved round robin so that a change of load hits every candidate alike; reading and
cropping images overlap the network in the engine and cost ~1 % of it (BENCHMARKS.md).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import whole_image_box
from .data.images import read_image
from .errors import InputError, NextposeError
from .geometry import crop_region, cut_crops
from .options import BACKENDS, PRECISIONS, RunOptions
from .predictor import PoseEstimator

TOLERANCE_PX = 1e-3  # keypoints closer than this to the fp32 eager model's count as equal


@dataclass(frozen=True)
class Timing:
    """One candidate's result: crops per second (median of the rounds), the seconds its first
    call took (folding, exporting or compiling), and the share of keypoints within
    :data:`TOLERANCE_PX` of the plain fp32 model's with the largest deviation (crop pixels)."""

    backend: str
    precision: str
    crops_per_s: float
    first_call_s: float
    equal: float
    max_px: float
    error: str | None = None  # why it could not run (then the numbers are NaN)


def candidates(estimator: PoseEstimator, names: Sequence[str] | None = None) -> list[tuple]:
    """(backend, precision) pairs worth timing here: every backend but ``auto`` in fp32, and
    ``fast`` in the reduced precisions the device runs natively; ``compile`` only when named
    (its first call compiles for ~20 s for resnext50 on a CPU, once per weights: later runs load
    the package from the cache). ``names``: ``backend`` or ``backend:precision``."""
    if names:
        out = []
        for name in names:
            backend, _, precision = name.partition(":")
            precision = precision or "fp32"
            if backend not in BACKENDS or backend == "auto" or precision not in PRECISIONS:
                raise InputError(
                    f"--backends {name}: expected BACKEND[:PRECISION] with a backend of "
                    f"{', '.join(b for b in BACKENDS if b != 'auto')} and a precision of "
                    f"{', '.join(PRECISIONS)}"
                )
            out.append((backend, precision))
        return out
    out = [("eager", "fp32"), ("fast", "fp32")]
    if estimator.device.type == "cpu":
        out.append(("onnxruntime", "fp32"))
    for precision in ("bf16", "fp16"):
        try:
            RunOptions(estimator.options.device, "fast", precision).resolve()
        except NextposeError:  # not native on this CPU
            continue
        out.append(("fast", precision))
    return out


def sample_crops(
    estimator: PoseEstimator, batch_size: int, images: Sequence[str] = ()
) -> np.ndarray:
    """(batch_size, h, w, 3) uint8 crops: the whole-image crops of ``images`` (repeated to fill
    the batch), or seeded random pixels without images."""
    w, h = estimator.input_size
    if not images:
        return np.random.default_rng(0).integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8)
    crops = []
    for path in images:
        image = read_image(path)
        box = whole_image_box(*image.shape[:2])[:, :4]
        centers, scales = crop_region(box, (w, h), estimator.config.inference.padding)
        crops.append(cut_crops(image, centers, scales, (w, h)))
    return np.concatenate(crops)[np.arange(batch_size) % len(crops)]


def run(
    estimator: PoseEstimator,
    pairs: Sequence[tuple[str, str]],
    crops: np.ndarray,
    seconds: float = 60.0,
    flip: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> list[Timing]:
    """Time each (backend, precision) of ``estimator``'s model on ``crops`` (N, h, w, 3) uint8
    for about ``seconds`` in all (at least 3 rounds); keypoints are compared with the plain
    fp32 model's (eager), each decoded as the model decodes (DARK: its decoding timed too)."""
    batch_size = len(crops)
    decode = estimator.config.inference.decode
    plain = estimator.with_options(backend="eager", precision="fp32").network
    want = np.asarray(plain.keypoints(crops, flip, decode)[0], np.float64)
    networks, firsts, errors, outputs = {}, {}, {}, {}
    for pair in pairs:
        backend, precision = pair
        say(f"building {backend} {precision}")
        start = time.perf_counter()
        try:
            network = estimator.with_options(backend=backend, precision=precision).network
            outputs[pair] = np.asarray(network.keypoints(crops, flip, decode)[0], np.float64)
        # a backend this machine cannot run (inductor's, ONNX Runtime's RuntimeError too):
        # its row says why, the others are still timed
        except (NextposeError, RuntimeError) as e:
            errors[pair] = str(e.args[0] if e.args else e).strip()[:300]
            continue
        firsts[pair] = time.perf_counter() - start
        networks[pair] = network
    times: dict[tuple, list[float]] = {pair: [] for pair in networks}
    deadline = time.perf_counter() + max(seconds - sum(firsts.values()), 0.0)
    while networks and (min(len(t) for t in times.values()) < 3 or time.perf_counter() < deadline):
        for pair, network in networks.items():
            start = time.perf_counter()
            network.keypoints(crops, flip, decode)
            times[pair].append(time.perf_counter() - start)
        if min(len(t) for t in times.values()) >= 25:
            break
    out = []
    nan = float("nan")
    for pair in pairs:
        if pair in errors:
            out.append(Timing(*pair, nan, nan, nan, nan, errors[pair]))
            continue
        moved = np.linalg.norm(outputs[pair] - want, axis=-1)
        out.append(
            Timing(
                *pair,
                crops_per_s=batch_size / float(np.median(times[pair])),
                first_call_s=firsts[pair],
                equal=float(np.mean(moved <= TOLERANCE_PX)),
                max_px=float(moved.max()),
            )
        )
    return out


def recommend(timings: Sequence[Timing]) -> tuple[Timing | None, Timing | None]:
    """(the fastest fp32 candidate, the fastest of all) among those that ran; fp32 ones must give
    the plain model's keypoints (all within the tolerance) to be chosen."""
    ran = [t for t in timings if t.error is None]
    exact = [t for t in ran if t.precision == "fp32" and t.equal == 1.0]
    best32 = max(exact, key=lambda t: t.crops_per_s, default=None)
    best = max(ran, key=lambda t: t.crops_per_s, default=None)
    return best32, best


def table(timings: Sequence[Timing]) -> str:
    """The timings as a plain-text table, with the speed relative to eager fp32."""
    base = next(
        (t.crops_per_s for t in timings if (t.backend, t.precision) == ("eager", "fp32")), None
    )
    rows = [("backend", "precision", "crops/s", "x eager", "first call s", "equal kpts", "max px")]
    for t in timings:
        if t.error is not None:
            rows.append((t.backend, t.precision, "-", "-", "-", "-", t.error))
            continue
        ratio = f"{t.crops_per_s / base:.2f}" if base else "-"
        rows.append(
            (
                t.backend,
                t.precision,
                f"{t.crops_per_s:.2f}",
                ratio,
                f"{t.first_call_s:.1f}",
                f"{100 * t.equal:.1f} %",
                f"{t.max_px:.3g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
        for r in rows
    )
