"""The layout rules, read from the code: imports run one way, no cycles, and the sidecar stays lean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.embedded_redis import EmbeddedRedis, free_port
from helpers import REPO, role_env, start_role, stop_process, wait_http

ALLOWED = {
    "common": set(),
    "sampler": {"common"},
    "monitors": {"common"},
    "attribution_workers": {"common", "sampler"},
    "service": {"common", "sampler", "monitors"},
    "demo": {"common", "sampler", "monitors", "attribution_workers", "service"},
}
"""What each top-level package may import; ``demo`` is imported by nothing."""
HEAVY = ("torch", "captum", "alibi_detect", "matplotlib", "sklearn", "umap", "numba", "pynndescent")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports count), resolved to dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                base = ".".join([*anchor[: len(anchor) - node.level + 1], base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {i for i in _imports(path, name) if i in modules and i != name} for name, path in modules.items()}


def test_packages_import_only_downwards() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def _part_of_the_sidecar(module: str) -> str:
    """``service.X`` for a module of the sidecar's subpackage ``X`` or its top-level module ``X``."""
    return ".".join(module.split(".")[:2])


def test_the_sidecar_s_packages_import_one_way() -> None:
    """Beyond modules: no two parts of ``service`` (``events``, ``decoding``, ``ingest``… and the top-level modules)
    import each other, directly or round a loop."""
    parts: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        if module.startswith("service."):
            imported = parts.setdefault(_part_of_the_sidecar(module), set())
            imported.update(_part_of_the_sidecar(t) for t in targets if t.startswith("service."))
    for part, targets in parts.items():
        targets.discard(part)
    assert len(parts) > 10
    assert _cycles(parts) == []


WEB = ("fastapi", "starlette")


def test_only_the_sidecar_s_web_layer_imports_the_web_framework() -> None:
    """Routes are thin over plain classes: inside ``service`` only ``app``, ``routes/`` and ``http/`` import FastAPI or
    Starlette, and no other package does."""
    offenders = sorted(
        module
        for module, path in _modules().items()
        if any(name.split(".")[0] in WEB for name in _imports(path, module))
        and not (module == "service.app" or module.startswith(("service.routes", "service.http")))
    )
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_rules_see_real_imports() -> None:
    """The graph is not vacuous: known edges are found."""
    graph = _graph()
    assert "monitors.feed" in graph["service.feed.writer"]
    assert "common.keys" in graph["monitors.fleet.owned"]


@pytest.mark.slow
def test_serve_does_not_load_the_heavy_libraries(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", append_only=False).start()
    port = free_port()
    env = role_env(VAI_REDIS_URL=server.url, VAI_MONITOR="external")
    process = start_role("serve", "--port", str(port), env=env, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/livez", process)
        event = {"model": "m", "request_id": "a", "logits": [1.0, 2.0], "embedding": [0.5, 0.25]}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/events", json=event).status_code == 202
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        loaded = sorted({name for name in HEAVY if f"/{name}/" in maps})
        assert loaded == [], f"vai-sidecar serve mapped {loaded}"
        # And as Python sees it, in a process that imports everything serve imports.
        probe = f"import sys, service.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == ""
    finally:
        stop_process(process)
        server.stop()
