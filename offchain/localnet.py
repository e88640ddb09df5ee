"""A local testnet: anvil from npm ``@foundry-rs/anvil`` (node_modules/.bin/anvil), bound to
127.0.0.1 only, with Prague rules to match the compiler's evmVersion and the in-process chain."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from offchain.compiler import project_root
from offchain.errors import ChainError

ANVIL_CHAIN_ID = 31337
HARDFORK = "prague"


def anvil_binary(root: Path | None = None) -> Path:
    binary = (root or project_root()) / "node_modules" / ".bin" / "anvil"
    if not binary.exists():
        raise ChainError(f"anvil not found at {binary}: run `npm ci`")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Anvil:
    """A running anvil process; use as a context manager or call stop()."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, port: int | None = None, chain_id: int = ANVIL_CHAIN_ID, accounts: int = 10, timeout: float = 30.0
    ) -> Anvil:
        port = port or free_port()
        process = subprocess.Popen(
            [
                str(anvil_binary()),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--hardfork",
                HARDFORK,
                "--chain-id",
                str(chain_id),
                "--accounts",
                str(accounts),
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        anvil = cls(process, port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise ChainError(f"anvil exited with code {process.returncode}: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return anvil
            except OSError:
                time.sleep(0.05)
        anvil.stop()
        raise ChainError(f"anvil did not open port {port} within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
