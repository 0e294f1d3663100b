"""TLS: the broker serves wss:// with a certificate made for the test (trustme)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import connect as ws_connect

import rtkit
from tests.conftest import scaled, within

KEY = "room:" + "t" * 40


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def _hello(url: str, ctx: ssl.SSLContext, key: str) -> dict:
    async with ws_connect(url, ssl=ctx) as ws:
        await ws.send(json.dumps({"action": "connect", "ref": 1, "key": key, "client_id": "a"}))
        connected = json.loads(await within(ws.recv()))
        await ws.send(json.dumps({"action": "attach", "ref": 2, "channel": "secure"}))
        assert json.loads(await within(ws.recv()))["action"] == "attached"
        await ws.send(json.dumps({"action": "publish", "ref": 3, "channel": "secure",
                                  "name": "n", "data": "over TLS"}))
        frames = [json.loads(await within(ws.recv())) for _ in range(2)]
        [message] = [f for f in frames if f["action"] == "message"]
        assert message["messages"][0]["data"] == "over TLS"
        return connected


async def test_serve_with_an_ssl_context_speaks_wss(ca: trustme.CA) -> None:
    with rtkit.serve(ssl=server_context(ca)) as srv:
        assert srv.url.startswith("wss://127.0.0.1:")
        connected = await _hello(srv.url, client_context(ca), srv.root_key)
        assert connected["action"] == "connected"
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust it
            await within(ws_connect(srv.url, ssl=ssl.create_default_context()))
        with pytest.raises(Exception):  # noqa: B017  plain ws:// to a TLS port
            await within(ws_connect(srv.url.replace("wss://", "ws://"), open_timeout=2))
        assert srv.stats()["connections"] == 0


@pytest.fixture
def pem_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


async def test_cli_serves_wss_with_certfile_and_keyfile(ca: trustme.CA,
                                                      pem_files: tuple[Path, Path]) -> None:
    certfile, keyfile = pem_files
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtkit.cli", "serve", "--port", "0", "--certfile", str(certfile),
         "--keyfile", str(keyfile)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RTKIT_KEY": KEY},
    )
    try:
        url = proc.stdout.readline().split()[-1]  # type: ignore[union-attr]
        assert url.startswith("wss://127.0.0.1:")
        assert (await _hello(url, client_context(ca), KEY))["action"] == "connected"
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=scaled(10))
    assert proc.returncode == 0 and "Traceback" not in err


def test_cli_refuses_a_bad_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    result = subprocess.run([sys.executable, "-m", "rtkit.cli", "serve", "--port", "0",
                             "--certfile", str(bad)], capture_output=True, text=True,
                            timeout=scaled(20))
    assert result.returncode == 2 and result.stderr.startswith("rtkit: cannot load")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_rtkit_clients_publish_subscribe_and_resume_over_tls(ca: trustme.CA,
                                                                  transport: str) -> None:
    with rtkit.serve(ssl=server_context(ca), heartbeat_interval=0.5) as srv:
        ctx = client_context(ca)
        async with rtkit.Client(srv.url, key=srv.root_key, ssl=ctx) as pub, \
                rtkit.Client(srv.url, key=srv.root_key, ssl=ctx,
                             transports=(transport,)) as sub:
            assert sub.transport == transport  # the SSE transport over https://
            got: list[object] = []
            await sub.channel("secure").subscribe(lambda m: got.append(m.data))
            await pub.channel("secure").publish("n", "one")
            await within(sub.reconnect())  # a resume over TLS too
            await pub.channel("secure").publish("n", "two")
            async with asyncio.timeout(scaled(5)):
                while got != ["one", "two"]:
                    await asyncio.sleep(0.01)
            assert sub.last_resume is not None and sub.last_resume.resumed
        untrusting = rtkit.Client(srv.url, key=srv.root_key, connect_timeout=1.0,
                                  transports=(transport,))
        with pytest.raises(rtkit.ConnectionFailed):  # the system trust store does not know it
            await within(untrusting.connect(timeout=1.0))
        await untrusting.close()
