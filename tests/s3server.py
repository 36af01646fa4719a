"""A real S3-compatible server on 127.0.0.1 (moto's server mode) and a TCP proxy in front of it that breaks
chosen requests' connections, as a flaky network does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cut:
    """Break the connection of a request whose first line contains `marker`, after `after` bytes of the
    response (`direction="down"`) or of the request body (`"up"`), at most `times` times (None: always)."""

    marker: bytes
    after: int = 4096
    direction: str = "down"
    times: int | None = None
    done: int = 0


@dataclass
class FaultProxy:
    """Forwards 127.0.0.1:port to the server; counts the bytes sent back; applies the cuts it is given."""

    upstream: tuple[str, int]
    cuts: list[Cut] = field(default_factory=list)
    bytes_down: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            state: dict[str, Any] = {"cut": None, "up": 0, "down": 0}
            threading.Thread(target=self._pump, args=(client, server, "up", state), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down", state), daemon=True).start()

    def _claim(self, head: bytes) -> Cut | None:
        first = head.split(b"\r\n", 1)[0]
        with self._lock:
            for cut in self.cuts:
                if cut.marker in first and (cut.times is None or cut.done < cut.times):
                    cut.done += 1
                    return cut
        return None

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, state: dict[str, Any]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if direction == "up" and data[:8].split(b" ", 1)[0] in (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE"):
                    # A new request on this connection (HTTP/1.1 without pipelining: the last response is over).
                    state.update(cut=self._claim(data), up=0, down=0)
                cut = state["cut"]
                if cut is not None and cut.direction == direction:
                    room = cut.after - state[direction]
                    if room <= len(data):
                        dst.sendall(data[:max(room, 0)])
                        break
                state[direction] += len(data)
                if direction == "down":
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
