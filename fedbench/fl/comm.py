"""The simulated wire: codecs that encode payloads into the tensors that are really sent.

Bytes are always counted from the encoded tensors (``numel * element_size``), never from a
formula; tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedbench.fl.state import Payload

Message = dict[str, tuple[torch.Tensor, ...]]


def message_bytes(message: Message) -> int:
    return sum(t.numel() * t.element_size() for parts in message.values() for t in parts)


class Codec:
    """Encodes a payload into the tensors that cross the wire, and back.

    ``key`` names the sender's stream (a client id, or ``"server"``) for codecs that keep
    per-sender state (e.g. error feedback). ``delta = True`` asks the engine to send the
    client's change (w_k - w_start) instead of its weights.
    """

    delta = False

    def encode(self, payload: Payload, key=None) -> Message:
        raise NotImplementedError

    def decode(self, message: Message, key=None) -> Payload:
        raise NotImplementedError


@dataclass
class NoCompression(Codec):
    """Send tensors as they are (float32 stays float32)."""

    def encode(self, payload: Payload, key=None) -> Message:
        return {k: (v,) for k, v in payload.items()}

    def decode(self, message: Message, key=None) -> Payload:
        return {k: parts[0] for k, parts in message.items()}


@dataclass
class Float16(Codec):
    """Cast to IEEE half precision on the wire; decoded back to float32."""

    def encode(self, payload: Payload, key=None) -> Message:
        return {k: (v.to(torch.float16),) for k, v in payload.items()}

    def decode(self, message: Message, key=None) -> Payload:
        return {k: parts[0].to(torch.float32) for k, parts in message.items()}
