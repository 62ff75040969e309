#!/usr/bin/env bash
# Fresh-venv install check (issue 14): build the sdist, and the wheel from the sdist; install the
# wheel into a new virtual environment, outside the repository; then, from a folder outside it:
#   nextpose --version (or the version from Python while the CLI has no --version),
#   nextpose predict on a sample image with local tiny weights (.pth, then .safetensors),
#   the sdist's own tests, against the installed wheel.
# It prints the venv's size at the end (the footprint numbers of README/BENCHMARKS come from it).
#
# Usage: benchmarks/check_install.sh [options]
#   --isolated        a venv without this Python's packages: pip installs torch and everything
#                     else (GBs; fast only where pip finds the wheels locally)
#   --torch "REQS"    requirements to install first, e.g. the CPU-only wheels (torch and
#                     torchvision from the same index: a CUDA torchvision fails to import with a
#                     CPU torch, "operator torchvision::nms does not exist"):
#                     --torch "torch torchvision --index-url https://download.pytorch.org/whl/cpu"
#                     (implies --isolated)
#   --tests MODE      the sdist's tests: "fast" (default: all but slow and gpu ones), "all",
#                     "none", or a pytest -k expression
#   --keep            keep the work folder (printed at the end)
# Default: a venv with --system-site-packages, so torch is not installed again; the wheel, and
# whatever it needs that this Python lacks, go into the venv.
# Measured (Linux x86_64, Python 3.11, nextpose 0.1.0 with all its dependencies):
#   CUDA torch 2.14.1 + torchvision 0.29.1 (PyPI's default): 2.98 GB of wheels, a 5.7 GB venv
#   (--torch "torch==2.14.1 torchvision==0.29.1 --tests none": 3.5 minutes from local wheels);
#   CPU-only torch 2.13.0+cpu: a 192 MB torch wheel, a 1.2 GB venv (with torchvision 0.28.0).
# Default mode with the fast tests: about 6 minutes on 2 cores (5 of them the 470 tests).
# Exit status: 0 when every step passed; the failing step is named otherwise.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
isolated=0
torch_reqs=""
tests=fast
keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --isolated) isolated=1 ;;
        --torch) torch_reqs=$2; isolated=1; shift ;;
        --tests) tests=$2; shift ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "check_install: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d "${TMPDIR:-/tmp}/nextpose-install.XXXXXX")
cleanup() { if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept: $work"; fi; }
trap cleanup EXIT
step() { echo; echo "== $*"; }
fail() { echo "check_install: FAILED: $*" >&2; exit 1; }

step "build sdist and wheel (the wheel from the sdist)"
"$python" -m build --outdir "$work/dist" "$repo" > "$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; fail "python -m build (pip install build?)"; }
sdist=$(ls "$work"/dist/nextpose-*.tar.gz)
wheel=$(ls "$work"/dist/nextpose-*.whl)
ls -l "$sdist" "$wheel"
tar tzf "$sdist" > "$work/sdist.txt"
for member in LICENSE tests/conftest.py tests/data/coco-mini/test_coco.json src/nextpose/py.typed; do
    grep -q "^nextpose-[^/]*/$member\$" "$work/sdist.txt" || fail "the sdist lacks $member"
done

step "fresh venv ($([ $isolated = 1 ] && echo isolated || echo --system-site-packages))"
if [ $isolated = 1 ]; then
    "$python" -m venv "$work/venv"
else
    "$python" -m venv --system-site-packages "$work/venv"
fi
vpy=$work/venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -n "$torch_reqs" ]; then
    # shellcheck disable=SC2086  # the requirements are words on purpose
    "$vpy" -m pip install -q $torch_reqs || fail "pip install $torch_reqs"
fi
extra=""
[ $isolated = 1 ] && [ "$tests" != none ] && extra="[dev]"
"$vpy" -m pip install -q "$wheel$extra" || fail "pip install the wheel"
# With --system-site-packages an installed nextpose (an editable checkout, say) may satisfy the
# requirement: put the wheel itself in the venv.
"$vpy" -m pip install -q --no-deps --force-reinstall "$wheel" || fail "pip install the wheel"

mkdir "$work/run" && cd "$work/run"  # outside the repository from here on
tar xzf "$sdist" -C "$work"
src=$(ls -d "$work"/nextpose-*/)
image=$src/tests/data/coco-mini/000000000785.jpg
export PATH=$work/venv/bin:$PATH

step "the installed package"
"$vpy" - "$work/venv" <<'EOF' || fail "the installed package"
import importlib.metadata as md
import sys
from pathlib import Path

import nextpose

venv = Path(sys.argv[1]).resolve()
where = Path(nextpose.__file__).resolve()
assert venv in where.parents, f"nextpose imported from {where}, not from the venv"
dist = md.distribution("nextpose")
assert dist.version == nextpose.__version__, (dist.version, nextpose.__version__)
files = {str(f) for f in dist.files}
assert any(f.endswith("licenses/LICENSE") for f in files), "no LICENSE in the wheel"
assert (where.parent / "py.typed").is_file(), "no py.typed"
assert dist.metadata["License-Expression"] == "Apache-2.0", dist.metadata["License-Expression"]
import torch
print(f"nextpose {nextpose.__version__} from {where.parent}; torch {torch.__version__}")
EOF

step "nextpose --version"
if nextpose --help 2>/dev/null | grep -q -- "--version"; then
    nextpose --version || fail "nextpose --version"
else
    echo "(this nextpose has no --version yet: the version from Python)"
    "$vpy" -c "import nextpose; print('nextpose', nextpose.__version__)" || fail "version"
fi

step "nextpose predict with local tiny weights"
"$vpy" - <<'EOF' || fail "making the tiny weights"
import torch

from nextpose import PoseNet, checkpoint, get_preset

torch.manual_seed(0)
model = PoseNet(get_preset("tiny_coco_96x64").config.model)
torch.save({"state_dict": model.state_dict()}, "tiny.pth")
checkpoint.convert("tiny.pth", "tiny.safetensors")
EOF
for weights in tiny.pth tiny.safetensors; do
    nextpose predict tiny_coco_96x64 "$image" --checkpoint "$weights" --out "poses-$weights.json" \
        || fail "nextpose predict --checkpoint $weights"
done
"$vpy" - <<'EOF' || fail "the predicted poses"
import json

a, b = (json.load(open(f"poses-tiny.{x}.json")) for x in ("pth", "safetensors"))
assert a == b and a, "the .pth and .safetensors weights gave different poses"
print(f"{len(a)} result(s), the same from .pth and .safetensors: {json.dumps(a)[:120]}...")
EOF

if [ "$tests" != none ]; then
    step "the sdist's tests ($tests), against the installed wheel"
    case $tests in
        fast) select=(-m "not slow and not gpu") ;;
        all) select=() ;;
        *) select=(-m "not slow and not gpu" -k "$tests") ;;
    esac
    cd "$src"
    "$vpy" -c "import nextpose, sys; sys.exit('$work/venv' not in nextpose.__file__)" \
        || fail "the sdist's folder shadows the installed package"
    "$vpy" -m pytest -q -p no:cacheprovider "${select[@]}" tests || fail "the sdist's tests"
    cd "$work/run"
fi

step "footprint"
du -sh "$work/venv" | sed 's/\t/  /'
[ $isolated = 0 ] && echo "(--system-site-packages: torch and the other packages this Python has are not counted)"
echo; echo "check_install: all steps passed"
