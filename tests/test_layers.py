"""The package stays layered: a module imports only from its own layer or lower ones,
never from a higher one (lazy imports inside functions included), and there is no
import cycle between its parts."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "id3pm"

# Lowest first. A newcomer reads them in this order.
LAYERS = [
    {"", "files", "hardware", "train_config", "tfjs_graph", "tflite_graph"},
    {"images"},
    {"alignment"},
    {"attributes", "encoders", "checkpoint", "diffusion", "models", "adversarial"},
    {"data", "sampling", "modelcheck", "modeldir", "prior", "controls", "outputs", "adapter"},
    {"pipeline", "refine", "superres", "training"},
    {"evaluation", "serving"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def imports() -> dict[str, set[str]]:
    """{part of id3pm: the other parts it imports}, by reading every module."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        part = "" if parts == ("__init__",) else parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name == "id3pm" or name.startswith("id3pm."):
                    target = name.split(".")[1] if "." in name else ""
                    if target != part:
                        edges.setdefault(part, set()).add(target)
    return edges


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    parts = {"" if p == "__init__" else p for p in parts}
    assert parts - set(LAYER) == set(), "give the new module a layer in tests/test_layers.py"


def test_no_part_imports_a_higher_layer():
    upward = [(a, b) for a, targets in imports().items() for b in targets if LAYER[b] > LAYER[a]]
    assert upward == []


def test_there_is_no_import_cycle():
    edges = imports()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
