"""A TCP forwarder for fault tests: clients connect to the proxy, which relays bytes to a PostgreSQL server.

``cut()`` simulates a network failure: every relayed connection is reset and new connections are refused (reset as
soon as they arrive, as a firewall rejecting them would; counted in ``refused``) or black-holed (accepted, never
answered, as a dropped route: the client waits for its connect_timeout). ``restore()`` forwards again;
``retarget()`` points new connections at another server (a failover to a new primary). Threads, no asyncio: the
rig's servers are local and the connection count is small.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Literal

CutMode = Literal["refuse", "blackhole"]
_BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a middlebox dropping the connection would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``; ``port`` is chosen free unless given."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []  # black-holed client sockets
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._mode: CutMode | None = None
        self._closing = False
        self.port = port
        self.connections = 0
        self.refused = 0

    # -- life cycle ------------------------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._closing = True
        self._close_listener()
        self._drop_all()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------------------------------

    def cut(self, mode: CutMode = "refuse") -> None:
        """Reset every relayed connection; new ones are refused (``refuse``) or left unanswered (``blackhole``)."""
        with self._lock:
            self._mode = mode
        self._drop_all()

    def restore(self) -> None:
        """Forward again (on the same port)."""
        with self._lock:
            self._mode = None
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to another server; the relayed ones are reset (the old server is gone)."""
        with self._lock:
            self.target = (host, port)
        self._drop_all()

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    # -- internals -------------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept, args=(listener,), daemon=True,
                                          name=f"tcp-proxy-{self.port}")
        self._accepter.start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._accepter is not None and self._accepter is not threading.current_thread():
            self._accepter.join(timeout=5)
            self._accepter = None

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for client, server in pairs:
            _reset(client)
            _reset(server)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener closed
            with self._lock:
                mode, target = self._mode, self.target
            if mode == "blackhole":
                with self._lock:
                    self._held.append(client)
                continue
            if mode == "refuse":
                with self._lock:
                    self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(target, timeout=10)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.add((client, server))
                self.connections += 1
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [], 0.5)
                with self._lock:
                    if (client, server) not in self._pairs:
                        return  # cut: the sockets were reset
                for sock in readable:
                    data = sock.recv(_BUFFER)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._pairs.discard((client, server))
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass


__all__ = ["CutMode", "TcpProxy"]
