"""Data flows one way: pde, models <- symmetry <- quotient <- mechanics/meanfield <- monitor <- control <- experiments/report/cli."""

import ast
from pathlib import Path

import shockwatch

LAYERS = ["pde", "symmetry", "quotient", "mechanics", "meanfield", "monitor", "control", "experiments", "report", "integrations", "cli"]
RANK = {"pde": 0, "models": 0} | {"symmetry": 1, "quotient": 2, "mechanics": 3, "meanfield": 3,
                                          "monitor": 4, "control": 5, "experiments": 6, "report": 6,
                                          "integrations": 6, "cli": 7}


def test_no_layer_imports_from_a_later_one():
    """Truth: the import statements of every module, parsed (relative and absolute)."""
    root = Path(shockwatch.__file__).parent
    violations = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        layer = parts[0]
        if layer not in RANK:
            continue
        package = ["shockwatch", *parts[:-1]] if path.name != "__init__.py" else ["shockwatch", *parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = [*base, *(node.module.split(".") if node.module else [])]
                else:
                    target = (node.module or "").split(".")
                if target[:1] == ["shockwatch"] and len(target) > 1 and target[1] in RANK:
                    if RANK[target[1]] > RANK[layer]:
                        violations.append(f"{path.relative_to(root)} imports {'.'.join(target)}")
    assert not violations, violations
