"""A local testnet: anvil from npm ``@foundry-rs/anvil``, bound to 127.0.0.1 only, with Prague
rules to match the compiler's evmVersion and the in-process chain.

The npm package installs a Node.js wrapper (``node_modules/.bin/anvil``) that starts the native
binary of the platform package (``node_modules/@foundry-rs/anvil-<os>-<arch>/bin/anvil``). When
that native binary is there it is started directly, so that a signal reaches anvil itself and
waiting for the process means waiting for anvil (and for its ``--state`` dump); otherwise the
wrapper is started.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from offchain.compiler import project_root
from offchain.errors import ChainError

ANVIL_CHAIN_ID = 31337
HARDFORK = "prague"
HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds anvil gets to exit (and dump its state) before it is killed

_OS = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def anvil_binary(root: Path | None = None) -> Path:
    """The npm wrapper ``node_modules/.bin/anvil``; a one-line error when ``npm ci`` was not run."""
    binary = (root or project_root()) / "node_modules" / ".bin" / "anvil"
    if not binary.exists():
        raise ChainError(f"anvil not found at {binary}: run `npm ci`")
    return binary


def native_anvil_binary(root: Path | None = None) -> Path | None:
    """The platform's native anvil installed by npm, or None when there is none."""
    os_name, arch = _OS.get(platform.system()), _ARCH.get(platform.machine())
    if os_name is None or arch is None:
        return None
    name = "anvil.exe" if os_name == "win32" else "anvil"
    binary = (root or project_root()) / "node_modules" / "@foundry-rs" / f"anvil-{os_name}-{arch}" / "bin" / name
    return binary if binary.is_file() else None


def anvil_executable(root: Path | None = None) -> Path:
    """What to start: the native binary when npm installed one, else the wrapper."""
    return native_anvil_binary(root) or anvil_binary(root)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something already listens on ``host:port`` (a closed connection lingering in
    TIME_WAIT does not count: anvil, like most servers, binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def rpc_request(url: str, method: str, params: list[object] | None = None, timeout: float = 2.0) -> object:
    """One JSON-RPC call with the standard library (no web3 needed); the ``result``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if not isinstance(reply, dict) or "result" not in reply:
        raise ChainError(f"{url} answered {method} with {str(reply)[:200]}")
    return reply["result"]


@dataclass
class Anvil:
    """A running anvil process; use as a context manager or call stop()."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @classmethod
    def start(
        cls,
        port: int | None = None,
        chain_id: int = ANVIL_CHAIN_ID,
        accounts: int = 10,
        timeout: float = 30.0,
        *,
        balance: int | None = None,
        block_time: float | None = None,
        state: Path | None = None,
        mnemonic: str | None = None,
        new_session: bool = False,
    ) -> Anvil:
        """Start anvil on ``port`` (default: a free one) and wait until it answers ``eth_chainId``
        with ``chain_id``.

        ``balance`` is each dev account's ether (anvil's default: 10000); ``block_time`` mines a
        block every so many seconds instead of one per transaction; ``state`` is loaded at start
        if it exists and written on stop (anvil ``--state``); ``mnemonic`` derives the dev
        accounts (anvil's default: its well-known test mnemonic); ``new_session`` puts anvil in
        its own session, so that a Ctrl-C on the terminal reaches only its parent, which then
        stops it. A port that something already listens on is refused before anvil starts.
        """
        if port is not None and port != 0 and port_in_use(port):
            raise ChainError(
                f"port {port} on {HOST} is already in use (another node running?): stop it or choose another port"
            )
        port = port or free_port()
        command = [
            str(anvil_executable()),
            "--host",
            HOST,
            "--port",
            str(port),
            "--hardfork",
            HARDFORK,
            "--chain-id",
            str(chain_id),
            "--accounts",
            str(accounts),
            "--silent",
        ]
        if balance is not None:
            command += ["--balance", str(balance)]
        if block_time is not None:
            command += ["--block-time", str(block_time)]
        if state is not None:
            command += ["--state", str(state)]
        if mnemonic is not None:
            command += ["--mnemonic", mnemonic]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=new_session,
            )
        except OSError as exc:
            raise ChainError(f"cannot start {command[0]}: {exc}") from exc
        anvil = cls(process, port)
        try:
            anvil._wait_ready(chain_id, timeout)
        except BaseException:
            anvil.stop()
            raise
        return anvil

    def _wait_ready(self, chain_id: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise ChainError(f"anvil exited with code {self.process.returncode}: {' '.join(err.split())[:500]}")
            try:
                answer = rpc_request(self.url, "eth_chainId", timeout=1.0)
            except (OSError, ValueError, urllib.error.URLError):
                time.sleep(0.05)
                continue
            if not isinstance(answer, str) or int(answer, 16) != chain_id:
                raise ChainError(f"the node on port {self.port} answers chain id {answer!r}, not {chain_id}")
            return
        raise ChainError(f"anvil did not answer on port {self.port} within {timeout} s")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ask anvil to exit (SIGTERM; it writes its ``--state`` then), kill it after ``timeout``
        s; returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        return self.process.returncode

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
