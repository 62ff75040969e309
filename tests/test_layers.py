"""The package's modules sit in layers: every import points down this list, there is no
import cycle, and no nextpose module is imported inside a function to dodge one (only the CLI
loads the library inside its verbs, for start-up time; third-party imports inside functions,
of optional or heavy dependencies, are fine; so are the pipeline's import of ``detection``,
whose torchvision costs 2.4 s that a pipeline over given boxes does not pay, and the predictor's
of the PyTorch backends, which a run on a cached ONNX graph does without)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ANN_FILE, COCO, DET_FILE

import nextpose

SRC = Path(nextpose.__file__).parent

# Lowest first. A module may import modules of its own layer or of layers above it in this
# list (lower layers), never of a later one.
LAYERS = [
    ["_version", "errors", "fileio", "opencv", "progress", "distributed"],
    ["keypoints"],
    ["config", "presets", "visualize", "options"],
    ["structures", "geometry", "codec", "data.images", "data.coco"],
    ["boxes", "data.transforms", "geometry_torch", "codec_torch", "model.backbone", "model.head",
     "model.posenet", "model", "model.tta", "optimize", "checkpoint", "data.datasets", "data"],
    ["onnxgraph"],
    ["graphs"],
    ["runtime"],
    ["engine"],
    ["predictor", "inference"],
    ["benchmark", "export", "sources", "detection", "tracking", "writers", "evaluation.oks_nms",
     "evaluation.coco_eval", "evaluation.evaluate", "evaluation"],
    ["pipeline", "serve.batcher", "serve.app", "serve"],
    ["sharded"],
    ["training.distributed", "training.loss", "training.optim", "training.pretrained",
     "training.state", "training.run_folder",
     "training.loop", "training"],
    ["cli._options", "cli.benchmark", "cli.convert", "cli.evaluate", "cli.export", "cli.predict",
     "cli.serve", "cli.train", "cli", "__main__", "__init__"],
]  # fmt: skip
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# Modules that import the library inside functions: `nextpose --help` stays fast, a pipeline
# without a detector does not import torchvision, and an estimator whose ONNX graph is cached
# imports no torch (the predictor loads the PyTorch backends and model when it needs them).
LAZY_MODULES = {
    "pipeline",
    "predictor",
    "cli.benchmark",
    "cli.convert",
    "cli._options",
    "cli.evaluate",
    "cli.export",
    "cli.predict",
    "cli.serve",
    "cli.train",
    "cli",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported nextpose module, inside a function?, line) for each import in the file."""
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        lazy = id(node) in inner
        if isinstance(node, ast.Import):  # import nextpose.x (as y)
            found += [
                (a.name.split(".", 1)[1] if "." in a.name else "__init__", lazy, node.lineno)
                for a in node.names
                if a.name.split(".")[0] == "nextpose"
            ]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == "nextpose":  # from nextpose(.x) import y
                t = node.module.split(".", 1)[1] if "." in node.module else ""
                for a in node.names:
                    sub = f"{t}.{a.name}" if t else a.name
                    found.append((sub if sub in RANK else t or "__init__", lazy, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [target] if node.module else [".".join([*base, a.name]) for a in node.names]
            for t in names:
                sub = [f"{t}.{a.name}" for a in node.names]
                hits = [s for s in sub if s in RANK] or [t]
                found += [(h, lazy, node.lineno) for h in hits]
    return found


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(RANK))
    assert not missing, f"add these modules to LAYERS: {missing}"


@pytest.mark.parametrize("name", sorted(RANK))
def test_imports_point_down(name):
    path = _modules()[name]
    for target, lazy, line in _imports(name, path):
        target = target if target in RANK else target.rsplit(".", 1)[0]
        assert target in RANK, f"{name}:{line} imports unknown module {target}"
        if lazy and name in LAZY_MODULES:
            continue  # the CLI loads the library on first use (start-up time)
        assert not lazy, f"{name}:{line}: imports {target} inside a function"
        assert RANK[target] <= RANK[name], (
            f"{name} (layer {RANK[name]}) imports {target} (layer {RANK[target]}), line {line}"
        )


def test_no_import_cycles():
    graph = {
        name: {t if t in RANK else t.rsplit(".", 1)[0] for t, lazy, _ in _imports(name, path)
               if not lazy}
        for name, path in _modules().items()
    }  # fmt: skip
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] if nxt in trail else trail
                pytest.fail(f"import cycle: {' -> '.join([*cycle, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_type_checkers_see_every_public_name():
    """``nextpose/__init__.py`` imports each public name under TYPE_CHECKING from the module
    that defines it (what a type checker sees), the same names ``__getattr__`` resolves."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    )
    seen = {a.name: n.module for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert seen == nextpose._EXPORTS


def test_help_and_version_import_no_torch():
    code = (
        "import sys; from nextpose.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import nextpose; nextpose.__version__\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_the_clis_torch_free_lists_are_the_librarys():
    """cli/_options.py spells the choices out so that --help needs no torch; they must stay
    what the library accepts."""
    from nextpose import detection, options, pipeline
    from nextpose.cli import _options
    from nextpose.training import pretrained

    assert tuple(detection.DETECTORS) == options.DETECTOR_NAMES
    assert detection.DEFAULT_DETECTOR in detection.DETECTORS
    assert pipeline.DEFAULT_DETECTOR == _options.DEFAULT_DETECTOR == detection.DEFAULT_DETECTOR
    assert _options.PRETRAINED == pretrained.SOURCES


STARTUP_SCRIPT = """
import sys
from nextpose.cli import main

checkpoint, images, ann_file, bbox_file, out, *backends = sys.argv[1:]
for b in backends:
    assert main(["eval", checkpoint, "--images", images, "--ann-file", ann_file, "--bbox-file",
                 bbox_file, "--backend", b, "--no-progress", "--out", f"{out}/{b}"]) == 0
assert main(["predict", checkpoint, images, "--boxes", bbox_file, "--no-progress", "--out",
             f"{out}/poses.json"]) == 0
heavy = sorted(m for m in ("torchvision", "torch._dynamo", "sympy", "onnx") if m in sys.modules)
print("imported:", heavy)
"""


@pytest.mark.slow
def test_jobs_over_given_boxes_import_no_torchvision(tiny_checkpoint, tmp_path):
    """eval and predict over a box file import neither torchvision nor torch._dynamo (2.4 s and
    more of every process's start-up), on ``eager``, ``fast`` and a cached ``onnxruntime``
    graph: only a detector, ImageNet weights, ``compile`` and the ONNX export need them."""

    def run(folder: str, *backends: str) -> str:
        args = [str(tiny_checkpoint), str(COCO), str(ANN_FILE), str(DET_FILE),
                str(tmp_path / folder), *backends]  # fmt: skip
        env = {**os.environ, "NEXTPOSE_CACHE": str(tmp_path / "cache")}  # none exported yet
        done = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, *args], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.splitlines()[-1]

    assert "onnx" in run("first", "onnxruntime")  # exported into the cache
    assert run("second", "eager", "fast", "onnxruntime") == "imported: []"
