"""The package's import graph flows one way: no module imports a layer above its own (docs/design.md section 2).

Units are radiospine's top-level modules and subpackages; a unit may import units of its own layer or of lower
layers. Imports inside a unit (``radiospine.roi.cut`` -> ``radiospine.roi.axial``) are not checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import radiospine

#: Lowest first; the same order as docs/design.md section 2.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer.split()) for layer in (
    "__version__ vocab errors hashing workspace threads csvio task",
    "geometry",
    "config artifacts device checkpoint",
    "io",
    "catalog labels metrics submission exports",
    "roi",
    "features",
    "models",
    "report",
    "synth volume_import",
    "stages",
    "cli",
))
PACKAGE = Path(radiospine.__file__).parent


def _layer(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"radiospine.{unit} is in no layer of tests/test_layers.py: add it (and to docs/design.md)")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imported_units(path: Path) -> set[str]:
    units: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "radiospine":
                units.update(alias.name for alias in node.names)
            elif node.module.startswith("radiospine."):
                units.add(_unit(node.module))
        elif isinstance(node, ast.Import):
            units.update(_unit(alias.name) for alias in node.names if alias.name.startswith("radiospine."))
    return units


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """``"radiospine/x.py (layer 2) imports radiospine.y (layer 5)"`` for every import of a higher layer."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent)
        unit = _unit(".".join(relative.with_suffix("").parts))
        if unit == "__init__":
            continue
        for imported in _imported_units(path) - {unit}:
            if _layer(imported) > _layer(unit):
                found.append(f"{relative} (layer {_layer(unit)}) imports radiospine.{imported} "
                             f"(layer {_layer(imported)})")
    return found


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports() == []


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "radiospine"
    (package / "roi").mkdir(parents=True)
    (package / "vocab.py").write_text("from radiospine.roi import cut\n")
    (package / "roi" / "cut.py").write_text("from radiospine import vocab\nimport radiospine.models.ordinal\n")
    assert upward_imports(package) == [
        "radiospine/roi/cut.py (layer 5) imports radiospine.models (layer 7)",
        "radiospine/vocab.py (layer 0) imports radiospine.roi (layer 5)",
    ]
