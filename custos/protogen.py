"""Generate Python modules and typed stubs from ``proto/custos/v1/*.proto``.

Used by the install step (setup.py) and by the check that regenerating changes nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def proto_files(root: Path) -> list[Path]:
    """Return the .proto sources, sorted so the output is deterministic."""
    return sorted((root / "proto").rglob("*.proto"))


def generate(root: Path, out: Path | None = None) -> Path:
    """Run protoc (from grpcio-tools) into ``out`` (default: the source tree); return the package dir."""
    from grpc_tools import protoc  # build-time dependency

    out = out or root
    target = out / "custos" / "v1"
    target.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root / 'proto'}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
    ]
    plugin = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-mypy"
    )
    grpc_plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-mypy_grpc"
    )
    if plugin and grpc_plugin:
        args += [
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--mypy_out={out}",
            f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
            f"--mypy_grpc_out={out}",
        ]
    else:
        args.append(f"--pyi_out={out}")
    args += [str(p) for p in proto_files(root)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(str(p) for p in proto_files(root)))
    (target / "__init__.py").write_text('"""Generated from proto/custos/v1; do not edit."""\n')
    return target


def check(root: Path) -> list[str]:
    """Regenerate into a scratch directory; return the generated files that differ from custos/v1."""
    import filecmp
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(root, Path(scratch))
        current = root / "custos" / "v1"
        names = {p.name for p in fresh.iterdir()} | {p.name for p in current.glob("*.py*")}
        return sorted(
            name
            for name in names
            if not (fresh / name).exists()
            or not (current / name).exists()
            or not filecmp.cmp(fresh / name, current / name, shallow=False)
        )


def main(argv: list[str]) -> int:
    """``python -m custos.protogen [--check]``: regenerate, or check that regenerating changes nothing."""
    root = Path(__file__).resolve().parent.parent
    if "--check" in argv:
        stale = check(root)
        if stale:
            print("generated protobuf code is out of date: " + ", ".join(stale), file=sys.stderr)
            print("reinstall (pip install -e .) to regenerate it from proto/", file=sys.stderr)
            return 1
        print("generated protobuf code matches proto/")
        return 0
    print(f"generated {generate(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
