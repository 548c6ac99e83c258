"""The house figures issue 10 tracks, computed from the source tree (no imports run).

    python scripts/house.py [--list]

* private names imported from another module (``from tenantlora.x import _name``);
* private modules imported from outside the package that holds them
  (``tenantlora/registry/*`` importing ``tenantlora.backends._http``);
* modules over 500 lines;
* ``# fmt: skip`` lines, and those without a comment saying why.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tenantlora"
LIMIT = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def private_module_owner(target: str) -> str | None:
    """The package that owns the first private part of ``target`` (None if all public)."""
    parts = target.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def scan() -> tuple[list[str], list[str], list[str], list[str], int]:
    private_names: list[str] = []
    private_modules: list[str] = []
    long_modules: list[str] = []
    bare_skips: list[str] = []
    skips = 0
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        rel = path.relative_to(ROOT.parent)
        if len(lines) > LIMIT:
            long_modules.append(f"{rel} {len(lines)}")
        for number, line in enumerate(lines, 1):
            if "# fmt: skip" in line:
                skips += 1
                above = [ln.strip() for ln in lines[max(0, number - 4) : number - 1]]
                if not any(ln.startswith("#") for ln in above) and line.count("#") < 2:
                    bare_skips.append(f"{rel}:{number}")
        me = module_name(path)
        mine = package_of(me, path.name == "__init__.py")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                target = node.module
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                target, names = "", []
                for alias in node.names:
                    owner = private_module_owner(alias.name)
                    outside = owner is not None and not (mine + ".").startswith(owner + ".")
                    if alias.name.startswith("tenantlora") and outside:
                        private_modules.append(f"{rel}:{node.lineno} import {alias.name}")
                continue
            else:
                continue
            if not target.startswith("tenantlora"):
                continue
            for name in names:
                submodule = ROOT.parent.joinpath(*target.split("."), name)
                if submodule.with_suffix(".py").exists() or submodule.is_dir():
                    owner = private_module_owner(f"{target}.{name}")
                    if owner is not None and not (mine + ".").startswith(owner + "."):
                        private_modules.append(f"{rel}:{node.lineno} {target}.{name}")
                    continue
                if name.startswith("_") and not name.startswith("__") and target != me:
                    private_names.append(f"{rel}:{node.lineno} {target}.{name}")
            owner = private_module_owner(target)
            if owner is not None and not (mine + ".").startswith(owner + "."):
                private_modules.append(f"{rel}:{node.lineno} {target}")
    return private_names, private_modules, long_modules, bare_skips, skips


def main() -> None:
    names, modules, long_modules, bare, skips = scan()
    print(f"private names imported from another module: {len(names)}")
    print(f"private modules imported from outside their package: {len(modules)}")
    print(f"modules over {LIMIT} lines: {len(long_modules)}")
    print(f"'# fmt: skip' lines: {skips} (without a comment saying why: {len(bare)})")
    if "--list" in sys.argv:
        for title, items in (
            ("private names", names),
            ("private modules", modules),
            ("long modules", long_modules),
            ("bare fmt: skip", bare),
        ):
            print(f"\n{title}:")
            for item in items:
                print(f"  {item}")


if __name__ == "__main__":
    main()
