"""The Restate service protocol as Capstan speaks it (V5/V6): framing, messages, generated protobuf types.

``framing`` is pure Python; ``messages`` and ``protocol_pb2`` import protobuf.
"""

from engine.invoker.protocol.framing import (
    REQUESTED_ACK_FLAG,
    Frame,
    FrameDecoder,
    MessageType,
    choose_protocol_version,
    content_type,
    encode_frame,
    is_command,
    is_control,
    is_custom_entry,
    is_notification,
)
from engine.invoker.protocol.messages import (
    command_completion_ids,
    decode,
    decode_output,
    input_command,
    notification,
    parse,
    run_completion_from_proposal,
    start_message,
)

__all__ = [
    "REQUESTED_ACK_FLAG",
    "Frame",
    "FrameDecoder",
    "MessageType",
    "choose_protocol_version",
    "command_completion_ids",
    "content_type",
    "decode",
    "decode_output",
    "encode_frame",
    "input_command",
    "is_command",
    "is_control",
    "is_custom_entry",
    "is_notification",
    "notification",
    "parse",
    "run_completion_from_proposal",
    "start_message",
]
