"""Compile contracts/ into the committed artifacts under offchain/artifacts/.

One standard-JSON input feeds whichever compiler is available, so a native solc (through
py-solc-x) and solcjs (from node_modules) produce the same bytecode:

1. ``$TCHAN_SOLC``: path to a native solc binary of exactly :data:`SOLC_VERSION`;
2. a py-solc-x installed solc of exactly :data:`SOLC_VERSION`;
3. ``node_modules/.bin/solcjs`` (pinned in package.json).

Imports are resolved here, not by the compiler: every source (ours and OpenZeppelin's from
node_modules) is inlined by content, and its SHA-256 goes into every artifact and into the build
manifest, so that a source changed without recompiling is caught by the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offchain.errors import CompilerError

SOLC_VERSION = "0.8.30"
EVM_VERSION = "prague"
OPTIMIZER_RUNS = 50_000
"""Optimised for calls (the gas bars). More runs still fit EIP-170 (1,000,000 runs: 22,111 bytes of
runtime code, 24,576 allowed) but save only 3 gas on a first deposit for about 260,000 more at
deployment (docs/adjudicator.md, "Gas"); tests/test_compiler.py checks the EIP-170 margin."""
SETTINGS: dict[str, Any] = {
    "evmVersion": EVM_VERSION,
    "viaIR": True,
    "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
    "metadata": {"bytecodeHash": "ipfs"},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

PACKAGE_DIR = Path(__file__).resolve().parent
ARTIFACTS_DIR = PACKAGE_DIR / "artifacts"
MANIFEST_NAME = "build-info.json"

_IMPORT_RE = re.compile(r"""^\s*import\s+(?:[^"';]*?\s+from\s+)?["']([^"']+)["']\s*;""", re.MULTILINE)


def project_root() -> Path:
    """The repository root (the parent of the installed ``offchain`` package in a checkout)."""
    return PACKAGE_DIR.parent


@dataclass(frozen=True)
class SourceSet:
    """Every source unit the build needs, by source unit name."""

    contents: dict[str, str]
    own: tuple[str, ...]  # the units under contracts/, whose contracts become artifacts

    def checksums(self) -> dict[str, str]:
        return {name: sha256_text(text) for name, text in sorted(self.contents.items())}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resolve_import(importer: str, path: str) -> str:
    if path.startswith("./") or path.startswith("../"):
        return posixpath.normpath(posixpath.join(posixpath.dirname(importer), path))
    return path


def _read_unit(root: Path, name: str) -> str:
    for base in (root, root / "node_modules"):
        candidate = base / name
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise CompilerError(f"cannot find source {name!r}: run `npm ci` to install node_modules")


def collect_sources(root: Path | None = None) -> SourceSet:
    """Read contracts/**.sol and, transitively, everything they import."""
    root = root or project_root()
    contracts = root / "contracts"
    own = tuple(sorted(p.relative_to(root).as_posix() for p in contracts.rglob("*.sol")))
    if not own:
        raise CompilerError(f"no Solidity sources under {contracts}")
    contents: dict[str, str] = {}
    pending = list(own)
    while pending:
        name = pending.pop()
        if name in contents:
            continue
        text = _read_unit(root, name)
        contents[name] = text
        pending.extend(_resolve_import(name, imp) for imp in _IMPORT_RE.findall(text))
    return SourceSet(contents=contents, own=own)


def standard_json_input(sources: SourceSet) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {name: {"content": sources.contents[name]} for name in sorted(sources.contents)},
        "settings": SETTINGS,
    }


# --------------------------------------------------------------------------- compilers


@dataclass(frozen=True)
class Compiler:
    """A way to run solc on standard JSON."""

    name: str
    version: str
    run: Callable[[dict[str, Any]], dict[str, Any]]


def _native_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Version: (\d+\.\d+\.\d+)", out)
    return match.group(1) if match else None


def _native_compiler(binary: str) -> Compiler:
    import solcx

    def run(data: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = solcx.compile_standard(data, solc_binary=binary)
        return result

    return Compiler(name=f"solc (native, {binary})", version=SOLC_VERSION, run=run)


def _solcjs_compiler(root: Path) -> Compiler | None:
    solcjs = root / "node_modules" / ".bin" / "solcjs"
    if not solcjs.exists() or shutil.which("node") is None:
        return None

    def run(data: dict[str, Any]) -> dict[str, Any]:
        # solcjs reads stdin with readFileSync(0), which fails with EAGAIN on a pipe, and exits
        # before a pipe on stdout is drained: give it files on both sides.
        with tempfile.TemporaryFile("w+") as stdin, tempfile.TemporaryFile("w+") as stdout:
            json.dump(data, stdin)
            stdin.seek(0)
            proc = subprocess.run(
                [str(solcjs), "--standard-json", "--base-path", ".", "--include-path", "node_modules"],
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                cwd=root,
                timeout=900,
            )
            stdout.seek(0)
            out = stdout.read()
        start = out.find("{")
        if start < 0:
            raise CompilerError(f"solcjs produced no JSON (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
        result: dict[str, Any] = json.loads(out[start:])
        return result

    version = _solcjs_version(root)
    if version != SOLC_VERSION:
        return None
    return Compiler(name="solcjs (node_modules)", version=version, run=run)


def _solcjs_version(root: Path) -> str | None:
    package = root / "node_modules" / "solc" / "package.json"
    try:
        version = json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def find_compiler(root: Path | None = None) -> Compiler | None:
    """The first available compiler of exactly SOLC_VERSION, or None."""
    root = root or project_root()
    env_binary = os.environ.get("TCHAN_SOLC")
    if env_binary:
        if _native_version(env_binary) != SOLC_VERSION:
            raise CompilerError(f"TCHAN_SOLC={env_binary} is not solc {SOLC_VERSION}")
        return _native_compiler(env_binary)
    try:
        import solcx
        import solcx.install
        from packaging.version import Version

        if Version(SOLC_VERSION) in solcx.get_installed_solc_versions():
            return _native_compiler(str(solcx.install.get_executable(SOLC_VERSION)))
    except Exception:  # noqa: BLE001 - py-solc-x absent or unusable: fall through to solcjs
        pass
    return _solcjs_compiler(root)


# --------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildResult:
    compiler: Compiler
    artifacts: dict[str, dict[str, Any]]  # contract name -> artifact
    manifest: dict[str, Any]


def compile_contracts(root: Path | None = None, compiler: Compiler | None = None) -> BuildResult:
    """Compile every contract under contracts/ and return the artifacts (nothing written)."""
    root = root or project_root()
    compiler = compiler or find_compiler(root)
    if compiler is None:
        raise CompilerError(
            f"no solc {SOLC_VERSION} found: run `npm ci` (solcjs) or set TCHAN_SOLC to a native solc {SOLC_VERSION}"
        )
    sources = collect_sources(root)
    output = compiler.run(standard_json_input(sources))
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompilerError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))

    compiler_info = {"version": compiler.version, "settings": SETTINGS}
    checksums = sources.checksums()
    artifacts: dict[str, dict[str, Any]] = {}
    for source_name in sources.own:
        for contract_name, out in sorted(output.get("contracts", {}).get(source_name, {}).items()):
            if contract_name in artifacts:
                raise CompilerError(f"two contracts named {contract_name}")
            artifacts[contract_name] = {
                "contractName": contract_name,
                "sourceName": source_name,
                "abi": out["abi"],
                "bytecode": "0x" + out["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + out["evm"]["deployedBytecode"]["object"],
                "compiler": compiler_info,
                "sources": checksums,
            }
    manifest = {
        "compiler": compiler_info,
        "sources": checksums,
        "contracts": {name: a["sourceName"] for name, a in sorted(artifacts.items())},
    }
    return BuildResult(compiler=compiler, artifacts=artifacts, manifest=manifest)


def write_artifacts(result: BuildResult, directory: Path = ARTIFACTS_DIR) -> list[Path]:
    """Replace the artifacts in ``directory`` with ``result``'s."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    written = []
    for name, artifact in result.artifacts.items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
        written.append(path)
    manifest = directory / MANIFEST_NAME
    manifest.write_text(json.dumps(result.manifest, indent=1, sort_keys=True) + "\n")
    written.append(manifest)
    return written


def stale_sources(root: Path | None = None, directory: Path = ARTIFACTS_DIR) -> list[str]:
    """Sources whose content differs from the build manifest (or that it lacks, or that vanished).

    Sources from node_modules are checked only when node_modules is installed.
    """
    root = root or project_root()
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    recorded: dict[str, str] = manifest["sources"]
    stale = []
    own_now = {p.relative_to(root).as_posix() for p in (root / "contracts").rglob("*.sol")}
    for name in sorted(own_now | {n for n in recorded if n.startswith("contracts/")}):
        path = root / name
        if (
            name not in recorded
            or not path.is_file()
            or sha256_text(path.read_text(encoding="utf-8")) != recorded[name]
        ):
            stale.append(name)
    for name, digest in sorted(recorded.items()):
        if name.startswith("contracts/"):
            continue
        path = root / "node_modules" / name
        if path.is_file() and sha256_text(path.read_text(encoding="utf-8")) != digest:
            stale.append(name)
    return stale
