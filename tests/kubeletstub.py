"""A stand-in kubelet: a real gRPC server of ``v1.PodResourcesLister`` on a unix socket.

The kubelet itself cannot run in CI (it needs a container runtime, root and a cluster), so
the tests serve the same service, method and messages with grpcio. The answer is encoded
here by hand, field number by field number, from the kubelet's
k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, and not with the client's own message
classes: a wrong field number in collectors/kubelet.py then fails the tests instead of
being mirrored by the server. It also sends the fields the client does not declare
(cpu_ids, memory, topology, dynamic_resources), as a current kubelet does.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc


@dataclass
class Container:
    name: str
    devices: list[tuple[str, list[str]]] = field(default_factory=list)  # (resource, ids)
    cpu_ids: list[int] = field(default_factory=list)


@dataclass
class Pod:
    name: str
    namespace: str
    containers: list[Container] = field(default_factory=list)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, messages, packed lists."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _str(number: int, text: str) -> bytes:
    return _len(number, text.encode())


def encode_list_response(pods: list[Pod], *, extras: bool = True) -> bytes:
    """``ListPodResourcesResponse`` bytes, as the kubelet would send them."""
    numa0 = _len(1, _varint(1 << 3 | 0) + _varint(0))  # TopologyInfo{nodes: [NUMANode{ID: 0}]}
    out = b""
    for pod in pods:
        body = _str(1, pod.name) + _str(2, pod.namespace)
        for c in pod.containers:
            cbody = _str(1, c.name)
            for resource, ids in c.devices:
                devices = _str(1, resource) + b"".join(_str(2, i) for i in ids)
                cbody += _len(2, devices + (_len(3, numa0) if extras else b""))
            if extras:
                if c.cpu_ids:
                    cbody += _len(3, b"".join(_varint(i) for i in c.cpu_ids))  # packed int64
                memory = _str(1, "memory") + _varint(2 << 3 | 0) + _varint(1 << 30)
                cbody += _len(4, memory)  # ContainerMemory
                claim = _str(2, "gpu-claim") + _str(3, pod.namespace)
                cbody += _len(5, claim)  # DynamicResource
            body += _len(3, cbody)
        out += _len(1, body)
    return out


class StubKubelet:
    """Serves ``List`` from ``pods``; ``delay`` holds each answer, ``raw`` replaces it."""

    def __init__(self, socket: Path, pods: list[Pod] | None = None) -> None:
        self.socket = socket
        self.pods = pods or []
        self.delay = 0.0
        self.raw: bytes | None = None
        self.calls = 0
        self.requests: list[bytes] = []
        self._release = threading.Event()
        self._server: grpc.Server | None = None

    def start(self, *, serve_list: bool = True) -> StubKubelet:
        """Listen on the socket; ``serve_list=False`` serves no method (an unknown API)."""
        self._release.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        if serve_list:
            handler = grpc.unary_unary_rpc_method_handler(
                self._list, request_deserializer=bytes, response_serializer=bytes
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("v1.PodResourcesLister", {"List": handler}),)
            )
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop answering; held answers are released. The socket file goes away."""
        self._release.set()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def _list(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        self.requests.append(request)
        if self.delay:
            self._release.wait(self.delay)
        return self.raw if self.raw is not None else encode_list_response(self.pods)
