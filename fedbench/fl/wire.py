"""Wire sizes: what a message costs as it would really be sent.

``bytes_up``/``bytes_down`` count payload tensors (``numel * element_size``). A real message
also carries a header that names each tensor, its dtype and shape: here every message is
measured as a safetensors file of its encoded tensors (``<key>/<part>`` per tensor, so top-k
indices, int8 scales and zero-size shape carriers are included), the ``wire`` size. The header
depends only on the names, dtypes and shapes, so it is measured once per such signature (by
serialising the message) and added to the payload after that.

``compression.entropy=zstd`` also records each message's size after zstd (level
:data:`ZSTD_LEVEL`) of that safetensors file: value-dependent, so every message is serialised
and compressed (costs time; off by default).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fedbench.errors import ConfigError, MissingPackage

ENTROPY = ("none", "zstd")
ZSTD_LEVEL = 3

Message = dict[str, tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Sizes:
    """One message's sizes in bytes: payload tensors, the safetensors file, and that file after
    zstd (None: ``compression.entropy=none``)."""

    payload: int = 0
    wire: int = 0
    zstd: int | None = None

    def __add__(self, other: Sizes) -> Sizes:
        z = None if self.zstd is None or other.zstd is None else self.zstd + other.zstd
        return Sizes(self.payload + other.payload, self.wire + other.wire, z)

    def times(self, n: int) -> Sizes:
        """The same message sent ``n`` times."""
        return Sizes(self.payload * n, self.wire * n, None if self.zstd is None else self.zstd * n)

    @property
    def sent(self) -> int:
        """What travels over a link: the zstd size when measured, else the wire size."""
        return self.wire if self.zstd is None else self.zstd


def total(sizes: Iterable[Sizes], entropy: bool) -> Sizes:
    out = Sizes(0, 0, 0 if entropy else None)
    for s in sizes:
        out = out + s
    return out


def flatten(message: Message, prefix: str = "") -> dict[str, torch.Tensor]:
    """A message's tensors under the names they travel with (``<prefix><key>/<part>``); a tensor
    that appears twice is sent twice (copied, as safetensors refuses shared memory)."""
    out, seen = {}, set()
    for k, parts in message.items():
        for i, t in enumerate(parts):
            t = t.contiguous()
            if t.numel() and (t.data_ptr(), t.numel(), t.dtype) in seen:
                t = t.clone()
            seen.add((t.data_ptr(), t.numel(), t.dtype))
            out[f"{prefix}{k}/{i}"] = t
    return out


def merge(**messages: Message) -> Message:
    """Several messages sent as one (e.g. an update and its privacy side information): each
    key is prefixed with its message's name, so keys cannot collide."""
    return {f"{name}:{k}": v for name, m in messages.items() for k, v in m.items()}


def payload_bytes(message: Message) -> int:
    return sum(t.numel() * t.element_size() for parts in message.values() for t in parts)


def serialize(message: Message) -> bytes:
    """The message as a safetensors file (what :class:`Wire` measures)."""
    from safetensors.torch import save

    return save(flatten(message))


class Wire:
    """Measures messages (:meth:`sizes`); ``entropy``: ``none`` or ``zstd``."""

    def __init__(self, entropy: str = "none") -> None:
        if entropy not in ENTROPY:
            raise ConfigError("compression.entropy", f"must be one of: {', '.join(ENTROPY)}", entropy)
        self.entropy = entropy
        self._headers: dict[tuple, int] = {}
        self._zstd = None
        if entropy == "zstd":
            try:
                import zstandard
            except ImportError:
                raise MissingPackage(
                    "compression.entropy", "zstd needs the zstandard package (pip install zstandard)", entropy
                ) from None
            self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    @staticmethod
    def _signature(message: Message) -> tuple:
        return tuple(
            (k, tuple((t.dtype, tuple(t.shape)) for t in parts)) for k, parts in sorted(message.items())
        )

    def header_bytes(self, message: Message) -> int:
        """Bytes safetensors adds to the payload for this message (length prefix and JSON header)."""
        sig = self._signature(message)
        if sig not in self._headers:
            self._headers[sig] = len(serialize(message)) - payload_bytes(message)
        return self._headers[sig]

    def sizes(self, message: Message) -> Sizes:
        payload = payload_bytes(message)
        if not message:
            return Sizes(0, 0, None if self._zstd is None else 0)
        if self._zstd is None:
            return Sizes(payload, payload + self.header_bytes(message), None)
        raw = serialize(message)
        return Sizes(payload, len(raw), len(self._zstd.compress(raw)))
