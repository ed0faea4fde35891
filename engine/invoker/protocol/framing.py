"""Service-protocol framing: an 8-byte big-endian header (type u16, flags u16, length u32) + protobuf body.

See ``service-protocol.md`` §2. Type-id ranges: ``0x0000-0x03FF`` control, ``0x0400-0x7FFF`` commands,
``0x8000-0xFBFF`` notifications (``0xFBFF`` = signal), ``0xFC00-0xFFFF`` custom entries (opaque).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from engine.errors import ProtocolError

__all__ = [
    "HEADER_SIZE",
    "MAX_SUPPORTED_VERSION",
    "MIN_SUPPORTED_VERSION",
    "REQUESTED_ACK_FLAG",
    "Frame",
    "FrameDecoder",
    "MessageType",
    "choose_protocol_version",
    "content_type",
    "encode_frame",
    "is_command",
    "is_control",
    "is_custom_entry",
    "is_notification",
]


class MessageType(enum.IntEnum):
    # control
    START = 0x0000
    SUSPENSION = 0x0001
    ERROR = 0x0002
    END = 0x0003
    COMMAND_ACK = 0x0004
    PROPOSE_RUN_COMPLETION = 0x0005
    AWAITING_ON = 0x0006  # V7
    PROPOSE_RUN_COMPLETION_ACK = 0x0007  # V7
    # commands
    INPUT_COMMAND = 0x0400
    OUTPUT_COMMAND = 0x0401
    GET_LAZY_STATE_COMMAND = 0x0402
    SET_STATE_COMMAND = 0x0403
    CLEAR_STATE_COMMAND = 0x0404
    CLEAR_ALL_STATE_COMMAND = 0x0405
    GET_LAZY_STATE_KEYS_COMMAND = 0x0406
    GET_EAGER_STATE_COMMAND = 0x0407
    GET_EAGER_STATE_KEYS_COMMAND = 0x0408
    GET_PROMISE_COMMAND = 0x0409
    PEEK_PROMISE_COMMAND = 0x040A
    COMPLETE_PROMISE_COMMAND = 0x040B
    SLEEP_COMMAND = 0x040C
    CALL_COMMAND = 0x040D
    ONE_WAY_CALL_COMMAND = 0x040E
    SEND_SIGNAL_COMMAND = 0x0410
    RUN_COMMAND = 0x0411
    ATTACH_INVOCATION_COMMAND = 0x0412
    GET_INVOCATION_OUTPUT_COMMAND = 0x0413
    COMPLETE_AWAKEABLE_COMMAND = 0x0414
    # notifications (note: Call result 0x800D, invocation id 0x800E)
    GET_LAZY_STATE_COMPLETION = 0x8002
    GET_LAZY_STATE_KEYS_COMPLETION = 0x8006
    GET_PROMISE_COMPLETION = 0x8009
    PEEK_PROMISE_COMPLETION = 0x800A
    COMPLETE_PROMISE_COMPLETION = 0x800B
    SLEEP_COMPLETION = 0x800C
    CALL_COMPLETION = 0x800D
    CALL_INVOCATION_ID_COMPLETION = 0x800E
    RUN_COMPLETION = 0x8011
    ATTACH_INVOCATION_COMPLETION = 0x8012
    GET_INVOCATION_OUTPUT_COMPLETION = 0x8013
    SIGNAL_NOTIFICATION = 0xFBFF


REQUESTED_ACK_FLAG: Final = 0x8000
HEADER_SIZE: Final = 8
MIN_SUPPORTED_VERSION: Final = 5
MAX_SUPPORTED_VERSION: Final = 6

_HEADER = struct.Struct(">HHI")
_CONTROL_TYPES: Final = frozenset(t.value for t in MessageType if t < 0x0400)


def is_control(t: int) -> bool:
    return 0 <= t < 0x0400


def is_command(t: int) -> bool:
    return 0x0400 <= t < 0x8000


def is_notification(t: int) -> bool:
    """Completion notifications and the signal notification (``0x8000-0xFBFF``)."""
    return 0x8000 <= t <= 0xFBFF


def is_custom_entry(t: int) -> bool:
    return 0xFC00 <= t <= 0xFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    body: bytes

    @property
    def requested_ack(self) -> bool:
        return bool(self.flags & REQUESTED_ACK_FLAG)

    def encode(self) -> bytes:
        return encode_frame(self.type, self.body, self.flags)


def encode_frame(msg_type: int, body: bytes, flags: int = 0) -> bytes:
    """Header + body; ``struct.pack('>HHI', type, flags, len(body))``."""
    return _HEADER.pack(msg_type, flags, len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed arbitrary chunks, get back whole frames.

    A header that announces a body longer than ``max_message_bytes`` or an unknown control type (``< 0x0400``) is
    refused from the header alone: :class:`ProtocolError`. The whole frames before it are still returned first (the
    error is then raised by the next call, ``feed(b"")`` included), so what the peer sent before a bad frame does
    not depend on how the bytes were chunked. After the error the decoder stays failed.
    """

    __slots__ = ("_buf", "_failed", "_max")

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 0:
            raise ValueError("max_message_bytes must be >= 0")
        self._max = max_message_bytes
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame currently held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEADER_SIZE:
                msg_type, flags, length = _HEADER.unpack_from(buf, pos)
                if length > self._max:
                    raise ProtocolError(
                        f"message type 0x{msg_type:04X} body of {length} bytes exceeds the limit of {self._max} bytes"
                    )
                if msg_type < 0x0400 and msg_type not in _CONTROL_TYPES:
                    raise ProtocolError(f"unknown control message type 0x{msg_type:04X}")
                body_end = pos + HEADER_SIZE + length
                if body_end > end:
                    break
                frames.append(Frame(msg_type, flags, bytes(buf[pos + HEADER_SIZE : body_end])))
                pos = body_end
        except ProtocolError as exc:
            self._failed = exc
            self._buf = bytearray()
            if frames:
                return frames  # the error comes with the next call
            raise
        del buf[:pos]
        return frames


def content_type(version: int) -> str:
    """Invocation content type of protocol ``version``: ``application/vnd.restate.invocation.v{N}``."""
    return f"application/vnd.restate.invocation.v{version}"


def choose_protocol_version(min_v: int, max_v: int, server_max: int = MAX_SUPPORTED_VERSION) -> int | None:
    """Highest version in ``[5, server_max]`` that the deployment's ``[min_v, max_v]`` also covers."""
    best = min(max_v, server_max)
    if best < max(min_v, MIN_SUPPORTED_VERSION):
        return None
    return best
