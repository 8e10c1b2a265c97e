"""The package's layering (README, "Where a frame goes"): a module imports only from its own layer
or the layers below it, never from one above (decode knows nothing of embedders, the scorer nothing
of the CLI). Function-level (lazy) imports count too: a lazy import upward is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import matcher

PACKAGE = Path(matcher.__file__).resolve().parent

# bottom to top; a module's layer is its first matching prefix
LAYERS = [
    ("matcher.errors", "matcher.config", "matcher.records"),
    ("matcher.decode",),
    ("matcher.embed",),
    ("matcher.score",),
    ("matcher.search",),
    ("matcher.write", "matcher.insight"),  # the report shows the insight, which reads reports
    ("matcher.run",),
    ("matcher.api",),
    ("matcher.serve",),
    ("matcher.cli",),
]


def layer_of(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every matcher module the file imports; `from matcher.x import y` counts
    as importing matcher.x.y when that is a module (a sub-package's module), else matcher.x."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("matcher")]
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("matcher")
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / sub.replace(".", "/") / "__init__.py"
                ).exists()
                out.append((node.lineno, sub if is_module else node.module))
    return out


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in modules() if layer_of(module_name(p)) is None]
    assert unplaced == [], f"modules outside the layering (add them to LAYERS): {unplaced}"


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in modules():
        mine = layer_of(module_name(path))
        for line, target in imported_modules(path):
            theirs = layer_of(target)
            if target != "matcher" and theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    # the checker itself: an upward import in a scratch file is reported
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from matcher.cli import app\n")
    assert imported_modules(f) == [(2, "matcher.cli")]
    assert layer_of("matcher.cli") > layer_of("matcher.decode.sources")
