"""An in-memory driver for BrokerCore: no sockets, a hand-moved clock."""

from __future__ import annotations

import json
from typing import Any

from rtkit.core.backplane import NodeView
from rtkit.core.broker import BrokerConfig, BrokerCore, Disconnect, Send, Session
from rtkit.core.tokens import ApiKey, KeyStore, issue_token

ROOT = ApiKey("root", "r" * 40)


class Harness:
    def __init__(self, node: NodeView | None = None, cluster_secret: bytes | None = None,
                 **config: Any) -> None:
        self.core = BrokerCore(BrokerConfig(**config), KeyStore([ROOT]), node=node,
                               cluster_secret=cluster_secret)
        self.now = 1_700_000_000.0
        self.inbox: dict[Session, list[dict[str, Any]]] = {}
        self.raw: dict[Session, list[str]] = {}
        self.disconnects: dict[Session, Disconnect] = {}
        self.sends = 0

    def open(self) -> Session:
        s = self.core.open_session(self.now)
        self.inbox[s], self.raw[s] = [], []
        return s

    def send(self, s: Session, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):  # encoded as rtkit's client does
            frame = json.dumps(frame, ensure_ascii=False)
        text = frame
        self.core.receive(s, text, self.now)

    def flush(self) -> None:
        for item in self.core.take_output():
            if isinstance(item, Send):
                self.sends += 1
                for target in item.targets:
                    self.raw[target].append(item.text)
                    self.inbox[target].append(json.loads(item.text))
            else:
                self.disconnects[item.session] = item

    def take(self, s: Session) -> list[dict[str, Any]]:
        self.flush()
        out, self.inbox[s] = self.inbox[s], []
        return out

    def connect(self, client_id: str | None = None, **creds: Any) -> Session:
        s = self.open()
        if not creds:
            creds = {"key": ROOT.value}
        self.send(s, {"action": "connect", "ref": 0, "client_id": client_id, **creds})
        reply = self.take(s)
        assert reply and reply[0]["action"] == "connected", reply
        return s

    def token(self, **kwargs: Any) -> str:
        return issue_token(ROOT, now=self.now, **kwargs)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.core.tick(self.now)
