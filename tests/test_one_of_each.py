"""Issue 12's "one of each" and "small parts", checked on the source (ast, nothing imported):
each shared rule is defined in one module only, the codes and the upload-protocol GUID are
written once, and no module grows past the size a part of one job should have."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

_MAX_LINES = 620  # "no module over ~600 lines" (the largest are at ~600)
_MAX_FACADE = 400  # "a façade of a few hundred"
_GUID = "7df0354d-249b-430f-820d-3d2a9bef4931"  # BITS upload protocol (spec: bits.md)

# name → what it is; each must be defined (def, class or module-level name) in one module
_ONCE = {
    "in_kernel": "the check for a Jupyter kernel",
    "FaultKind": "the fault vocabulary of the test servers",
    "Fault": "a fault to inject",
    "hresult_from_errno": "POSIX errno → Win32 HRESULT",
    "parse_range": "the Range header",
    "parse_content_range": "the Content-Range header",
    "retry_after": "the Retry-After header",
    "format_bytes": "bytes shown to a person",
    "RateEstimator": "the rate and ETA estimate",
    "UPLOAD_PROTOCOL": "the upload-protocol GUID",
}


def _package_files() -> dict[str, Path]:
    spec = importlib.util.find_spec("bitsnb")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {str(p.relative_to(root.parent).with_suffix("")): p for p in root.rglob("*.py")}
    assert len(files) > 50, "the scan found too few modules to mean anything"
    return files


def _defined(tree: ast.Module) -> set[str]:
    """Top-level names a module defines itself (not the ones it imports)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(p.read_text(), str(p)) for name, p in _package_files().items()}


@pytest.mark.parametrize("name", sorted(_ONCE))
def test_a_shared_rule_is_defined_once(trees: dict[str, ast.Module], name: str) -> None:
    where = sorted(mod for mod, tree in trees.items() if name in _defined(tree))
    assert len(where) == 1, f"{name} ({_ONCE[name]}) is defined in {where or 'no module'}"


def test_the_upload_guid_is_written_once(trees: dict[str, ast.Module]) -> None:
    where = sorted(
        mod
        for mod, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _GUID in node.value.lower()
    )
    assert where == ["bitsnb/_http_rules"], where


def test_the_codes_are_assigned_in_one_module(trees: dict[str, ast.Module]) -> None:
    """An HRESULT name (BG_E_*, E_*, S_*, ERROR_*) is given its value in ``_codes`` only."""
    prefixes = ("BG_E_", "BG_S_", "E_", "S_OK", "ERROR_")
    owners: dict[str, set[str]] = {}
    for mod, tree in trees.items():
        for name in _defined(tree):
            if name.startswith(prefixes):
                owners.setdefault(name, set()).add(mod)
    assert "BG_E_NOT_FOUND" in owners and "ERROR_DISK_FULL" in owners  # the scan sees them
    elsewhere = {n: sorted(m) for n, m in owners.items() if m != {"bitsnb/_codes"}}
    assert not elsewhere, elsewhere


def test_modules_stay_small_and_the_facade_thin() -> None:
    sizes = {name: len(p.read_text().splitlines()) for name, p in _package_files().items()}
    big = {name: n for name, n in sizes.items() if n > _MAX_LINES}
    assert not big, f"modules over {_MAX_LINES} lines: {big}"
    assert sizes["bitsnb/_manager"] <= _MAX_FACADE
