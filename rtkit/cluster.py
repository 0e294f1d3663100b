"""Trying a cluster on one machine: a throwaway Redis for the backplane.

Brokers become nodes of a cluster with ``rtkit.serve(backplane="redis://...")`` (or
``rtkit serve --backplane``). For a notebook, a test or a demo, :func:`redis_server` starts a
private Redis on a free loopback port, with no persistence (its data lives as long as the
process), and stops it when asked, when the cell that made it is run again, or when Python
exits::

    redis = rtkit.cluster.redis_server()        # needs the redis-server program
    nodes = [rtkit.serve(backplane=redis.url, root_key=KEY) for _ in range(3)]

It needs the ``redis-server`` program (Debian/Ubuntu: ``apt-get install redis-server``;
macOS: ``brew install redis``; conda: ``conda install -c conda-forge redis-server``);
:func:`redis_available` says whether it is there. In production, run Redis as a service
and point the nodes at it.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from rtkit import _rerun

__all__ = ["RedisServer", "RedisUnavailable", "redis_available", "redis_server"]


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` program, or it would not start."""

    def _render_traceback_(self) -> list[str]:
        # In a notebook: the reason and what to do, not a traceback.
        return [f"rtkit.cluster.RedisUnavailable: {self}"]


def redis_available() -> bool:
    """Whether the ``redis-server`` program is installed (on the PATH)."""
    return shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (see :func:`redis_server`)."""

    def __init__(self, port: int | None = None, db: int = 0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server; "
                "macOS: brew install redis; conda: conda install -c conda-forge redis-server)")
        self._binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="rtkit-redis-")
        self.port = port or _free_port()
        self.db = db
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/<db>``: what ``rtkit.serve(backplane=...)`` takes."""
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start it (again: on the same port, empty)."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self._dir.name,
             "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode()
                raise RedisUnavailable(f"redis-server did not start: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable("redis-server did not answer in time")
            time.sleep(0.02)

    def _answers(self) -> bool:
        import redis  # (an rtkit dependency)

        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0,
                                 socket_connect_timeout=1.0)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        """Stop it (its data is gone). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port: every channel's history is lost (the
        nodes see new epochs and their clients are told what was lost)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<rtkit.cluster.RedisServer {self.url} {'running' if self.running else 'stopped'}>"


def redis_server(port: int | None = None) -> RedisServer:
    """Start a private Redis on 127.0.0.1 (a free port unless given) for a local cluster.
    Raises :class:`RedisUnavailable` when ``redis-server`` is missing. Re-running the cell
    that called it stops the one it started before."""
    server = RedisServer(port)
    _rerun.replace_previous("redis", server, RedisServer.close)
    return server
