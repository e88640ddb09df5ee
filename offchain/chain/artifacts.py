"""The committed compiler output under offchain/artifacts/, read without Node or solc."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Any

from offchain.compiler import ARTIFACTS_DIR, MANIFEST_NAME
from offchain.errors import ArtifactError


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """ABI, bytecode, runtime bytecode and compiler info of contract ``name``."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no artifact for {name}: run `tchan compile`") from exc
    except ValueError as exc:
        raise ArtifactError(f"artifact {path} is not valid JSON") from exc
    return artifact


@lru_cache(maxsize=1)
def all_abis() -> dict[str, list[dict[str, Any]]]:
    return {
        path.stem: json.loads(path.read_text())["abi"]
        for path in sorted(ARTIFACTS_DIR.glob("*.json"))
        if path.name != MANIFEST_NAME
    }
