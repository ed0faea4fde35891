#!/usr/bin/env bash
# Regenerate engine/invoker/protocol/protocol_pb2.py and protocol_pb2.pyi from protocol.proto.
# The generated files are checked in; run this after editing the .proto and commit the result.
# The proto is compiled relative to the repository root so that its descriptor is registered as
# "engine/invoker/protocol/protocol.proto" (a unique name in protobuf's default descriptor pool).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"

cd "$root"
"$python" -m grpc_tools.protoc \
    --proto_path=. \
    --python_out=. \
    --pyi_out=. \
    engine/invoker/protocol/protocol.proto
# The generated stub uses bare generics (e.g. Mapping) that mypy --strict rejects; the stub is still used for
# type information, its own errors are silenced.
pyi=engine/invoker/protocol/protocol_pb2.pyi
{ echo "# mypy: ignore-errors"; cat "$pyi"; } > "$pyi.tmp" && mv "$pyi.tmp" "$pyi"
echo "generated engine/invoker/protocol/protocol_pb2.py and protocol_pb2.pyi"
