"""Messages between the sandbox service and a zygote: one JSON object per SOCK_SEQPACKET
datagram. A `run` message carries four file descriptors (SCM_RIGHTS), in FDS order, so the
execution's payload and output never pass through the zygote's memory: a later child forked from
the zygote cannot find an earlier tenant's data in memory it inherited.

service → zygote   {"op": "run", "timeout_s", "memory_bytes", "cpu_s", "max_output_bytes",
                    "stdout_bytes", "stderr_bytes"}  + fds
                   {"op": "cancel"}
zygote → service   {"op": "ready", "isolation": {...}}       (started, or cleaned up after a run)
                   {"op": "exit", "code", "signal", "timed_out", "cancelled", "wall_s", "cpu_s",
                    "maxrss_bytes", "uid"}
                   {"op": "fatal", "message"}                  (cannot sandbox: stop using me)

Child → service, on the result pipe: one JSON envelope
  {"status": "ok", "result": <value>, "stdout_truncated", "stderr_truncated"}
  {"status": "error" | "memory_limit" | "output_limit", "type", "message", "traceback", "line",
   …}
"""

from __future__ import annotations

import json

MAX_MESSAGE = 64 * 1024
FDS = ("payload", "result", "stdout", "stderr")


def encode(message: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(data)
