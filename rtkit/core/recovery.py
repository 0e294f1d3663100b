"""Recovery keys: what a new client needs to resume an old client's connection and channels
(for example after a kernel restart), as one opaque, copyable string."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from rtkit.errors import ProtocolError

VERSION = 1


@dataclass(frozen=True, slots=True)
class RecoveryKey:
    connection_key: str
    channels: dict[str, tuple[int, str | None]]  # name -> (last serial, epoch)

    def encode(self) -> str:
        payload = {"v": VERSION, "key": self.connection_key,
                   "channels": {name: [serial, epoch] for name, (serial, epoch)
                                in sorted(self.channels.items())}}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> RecoveryKey:
        """Parse a key; raises :class:`ProtocolError` (40003) if it is not one."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            obj = json.loads(raw)
            if obj.get("v") != VERSION or not isinstance(obj.get("key"), str):
                raise ValueError("unknown version")
            channels: dict[str, tuple[int, str | None]] = {}
            for name, (serial, epoch) in obj.get("channels", {}).items():
                if not isinstance(serial, int) or not isinstance(epoch, str | None):
                    raise ValueError("bad channel position")
                channels[str(name)] = (serial, epoch)
        except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
            raise ProtocolError(f"malformed recovery key: {exc}", code=40003) from None
        return cls(obj["key"], channels)
