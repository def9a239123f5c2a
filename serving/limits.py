"""Every bound the service puts on a request, in one place, each configurable by environment variable.

Why bounds at all: a single hostile or careless request must not cost more than a known amount of memory, CPU or
disk (a body of a million tiny parts, a 20,000 x 20,000 PNG, a JSON nested a million deep), and a burst of requests
must be answered quickly with 503 + ``Retry-After`` rather than queued until every client times out. Worst-case
memory held by request bodies is ``max_inflight x max_body`` (64 x 32 MiB by default).

=========================  ============================  =====================================================
variable                   default                       what
=========================  ============================  =====================================================
BYOL_MAX_BODY_BYTES        33554432 (32 MiB)             request body on an upload route (more → 413)
BYOL_MAX_JSON_BYTES        1048576 (1 MiB)               body on any other route (more → 413)
BYOL_MAX_PARTS             300                           multipart parts (files + fields) per request (→ 413)
BYOL_MAX_IMAGES            256                           images per /embed_batch or /index/add (→ 413)
BYOL_MAX_REQUEST_PIXELS    67108864 (64 Mpx)             pixels decoded for one request, all images (→ 413)
BYOL_MAX_INFLIGHT          64                            requests admitted at once (more → 503 + Retry-After)
BYOL_DECODE_THREADS        number of CPUs                threads decoding images / parsing bodies
BYOL_MAX_REMOVE            10000                         ids or uris per /index/remove (→ 413)
BYOL_MAX_RESULTS           65536                         queries x k of one /search_batch (→ 413)
BYOL_MAX_READING           256                           requests whose bodies are being read at once (→ 503)
BYOL_BODY_TIMEOUT_S        30                            a body not fully arrived after this long (→ 408)
BYOL_DECODE_MEMORY_BYTES   1073741824 (1 GiB)            decode memory shared by all requests of a worker
                                                         (decoded mode x pixels, conversion copies included)
BYOL_DECODE_WAIT_MS        2000                          longest a request waits for decode memory (→ 503)
=========================  ============================  =====================================================

In-flight slots (``BYOL_MAX_INFLIGHT``) are taken once a body is in; bodies still arriving hold a reading slot
(``BYOL_MAX_READING``) instead, bounded in number and in time, so clients that trickle their bodies cannot take the
slots real requests need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

ENV = {
    "max_body": "BYOL_MAX_BODY_BYTES", "max_json_body": "BYOL_MAX_JSON_BYTES", "max_parts": "BYOL_MAX_PARTS",
    "max_images": "BYOL_MAX_IMAGES", "max_request_pixels": "BYOL_MAX_REQUEST_PIXELS",
    "max_inflight": "BYOL_MAX_INFLIGHT", "decode_threads": "BYOL_DECODE_THREADS", "max_remove": "BYOL_MAX_REMOVE",
    "max_results": "BYOL_MAX_RESULTS", "max_reading": "BYOL_MAX_READING", "body_timeout_s": "BYOL_BODY_TIMEOUT_S",
    "decode_memory": "BYOL_DECODE_MEMORY_BYTES", "decode_wait_ms": "BYOL_DECODE_WAIT_MS",
}


@dataclass(frozen=True)
class Limits:
    max_body: int = 32 * 2**20
    max_json_body: int = 2**20
    max_parts: int = 300
    max_images: int = 256
    max_request_pixels: int = 64 * 2**20
    max_inflight: int = 64
    decode_threads: int = 0  # 0: one per CPU
    max_remove: int = 10_000
    max_results: int = 65_536  # 256 queries x k 256, or 65 x 1000
    max_reading: int = 256
    body_timeout_s: int = 30
    decode_memory: int = 2**30
    decode_wait_ms: int = 2000
    max_field_bytes: int = 256 * 2**10  # one text field of a multipart body (Starlette's own cap, 1 MiB, is a 500)
    max_part_header_bytes: int = 8 * 2**10  # the headers of one multipart part
    max_boundary: int = 200  # RFC 2046 says 70
    max_label_chars: int = 1000
    retry_after_s: int = 1

    @classmethod
    def from_env(cls, env=None) -> Limits:
        """Defaults overridden by the ``BYOL_*`` variables that are set; a malformed one is an error at start."""
        env = os.environ if env is None else env
        given = {}
        for f in fields(cls):
            name = ENV.get(f.name)
            if name and env.get(name, "").strip():
                try:
                    given[f.name] = int(env[name])
                except ValueError:
                    raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None
                if given[f.name] < (0 if f.name == "decode_threads" else 1):
                    raise ValueError(f"{name} must be positive, got {given[f.name]}")
        return cls(**given)

    @property
    def threads(self) -> int:
        return self.decode_threads or os.cpu_count() or 1
