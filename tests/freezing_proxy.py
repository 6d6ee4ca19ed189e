"""A TCP proxy that can freeze: a network path that stops forwarding but keeps its sockets open.

This is the partition that neither a closed socket nor a refused connection shows: a stalled
middlebox (proxy, NAT, load balancer) or a frozen peer host. The kernel on the proxy's side
keeps acknowledging what it is sent, so TCP keepalives and ``tcp_user_timeout`` see a healthy
link, and a client without its own deadline waits forever.

    with FreezingProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url("postgresql://postgres@127.0.0.1:5432/test")
        ...
        proxy.freeze()                          # now: nothing more crosses, both ways
        proxy.freeze_after(b"FOR UPDATE")       # or: once the client sends this, forward it,
                                                # then freeze (its answer never comes back)
        proxy.thaw()

While frozen nothing is read, so nothing is forwarded (the kernel buffers fill); connections
accepted meanwhile are held without being connected onward. ``thaw`` resumes everything.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class FreezingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._sockets: list[socket.socket] = []
        self._closed = False
        self.froze = threading.Event()  # set once frozen (by freeze() or a marker)
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    # ---- control -------------------------------------------------------------------------

    def url(self, url: str) -> str:
        """``url`` (a postgresql:// URL) pointed at this proxy instead of its own host."""
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def freeze(self) -> None:
        with self._lock:
            self._flowing.clear()
            self.froze.set()

    def freeze_after(self, marker: bytes) -> None:
        """Freeze right after forwarding the first client chunk that contains ``marker``."""
        with self._lock:
            self._marker = marker
            self.froze.clear()

    def thaw(self) -> None:
        with self._lock:
            self._marker = None
            self.froze.clear()
            self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> FreezingProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- forwarding ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._connect, args=(client,), name="proxy-conn", daemon=True
            ).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        self._flowing.wait()  # a connection made while frozen goes nowhere until thawed
        if self._closed:
            return
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(server)
        for src, dst, upstream in ((client, server, True), (server, client, False)):
            threading.Thread(
                target=self._pump, args=(src, dst, upstream), name="proxy-pump", daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(_CHUNK)
                if not data:
                    break
                self._flowing.wait()  # frozen while this chunk was on its way: hold it
                if self._closed:
                    break
                dst.sendall(data)
                if upstream:
                    with self._lock:
                        if self._marker is not None and self._marker in data:
                            self._marker = None
                            self._flowing.clear()
                            self.froze.set()
        except OSError:
            pass
        finally:
            if not self._closed:
                # One side really closed: pass that on, as a real path would.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
