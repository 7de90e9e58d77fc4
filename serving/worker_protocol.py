"""The frames a scoring worker process and the HTTP front (`serving.pool.ProcessPool`) exchange
over the worker's stdin / stdout: raw bytes, no pickle.

    request:  <u32 body length> <u8 endpoint code> body                 (front → worker)
    answer:   <u32 body length> <u16 HTTP status> body (JSON)           (worker → front)

The worker's first answer is its hello (status 0): JSON with the model's name and family, so
the front knows the worker has loaded the export. `serve_requests` is the worker's loop.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from lifeseq.serving.handler import Answer, encode, handle
from lifeseq.serving.scorer import Scorer

REQUEST_HEADER = struct.Struct("<IB")
ANSWER_HEADER = struct.Struct("<IH")
#: Endpoint of each request code, and back.
ENDPOINT_CODES = {1: "/score", 2: "/recommend"}
CODES = {endpoint: code for code, endpoint in ENDPOINT_CODES.items()}
#: Status of the worker's hello frame.
HELLO = 0


def request_frame(endpoint: str, body: bytes) -> bytes:
    """The frame of a request `body` for `endpoint`."""
    return REQUEST_HEADER.pack(len(body), CODES[endpoint]) + body


def answer_frame(status: int, body: bytes) -> bytes:
    """The frame of an answer."""
    return ANSWER_HEADER.pack(len(body), status) + body


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None at end of stream before the first byte.

    Raises:
        EOFError: the stream ended inside the frame.
    """
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            if left == size:
                return None
            raise EOFError(f"stream ended {left} bytes before the end of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve_requests(scorer: Scorer, requests: BinaryIO, answers: BinaryIO, hello: dict) -> int:
    """Send `hello`, then answer request frames from `requests` on `answers` until the front
    closes the stream; the number of requests answered."""
    answers.write(answer_frame(HELLO, encode(hello)))
    answers.flush()
    served = 0
    while True:
        header = _read_exact(requests, REQUEST_HEADER.size)
        if header is None:
            return served
        length, code = REQUEST_HEADER.unpack(header)
        body = _read_exact(requests, length) if length else b""
        endpoint = ENDPOINT_CODES.get(code)
        answer = (
            handle(scorer, endpoint, body or b"")
            if endpoint
            else Answer(500, encode({"error": f"worker: unknown endpoint code {code}"}))
        )
        answers.write(answer_frame(answer.status, answer.body))
        answers.flush()
        served += 1
