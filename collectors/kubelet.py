"""The kubelet's pod-resources API: which Kubernetes container holds which GPU.

Kubernetes hands GPUs to containers through a device plugin (NVIDIA's k8s-device-plugin,
the GPU Operator) and only the kubelet knows the result. It serves it on a unix socket,
usually /var/lib/kubelet/pod-resources/kubelet.sock, as the gRPC service
``v1.PodResourcesLister``: ``List`` returns every pod of the node with the device ids of
each container. For ``nvidia.com/gpu`` the ids are GPU UUIDs (``GPU-…``), for MIG
(``nvidia.com/mig-<profile>``, the device plugin's mixed strategy) MIG UUIDs, so they join
NVML's UUIDs without a lookup table. This is what dcgm-exporter reads for its pod labels.

The only module that imports grpc and google.protobuf (the optional extra ``k8s``). The
few messages read are built from a descriptor at first use, so there is no protoc step
and no generated file. Names and field numbers are those of the kubelet's
k8s.io/kubelet/pkg/apis/podresources/v1/api.proto::

    message ListPodResourcesRequest {}
    message ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
    message PodResources { string name = 1; string namespace = 2;
                           repeated ContainerResources containers = 3; }
    message ContainerResources { string name = 1; repeated ContainerDevices devices = 2;
                                 /* cpu_ids = 3, memory = 4, dynamic_resources = 5 */ }
    message ContainerDevices { string resource_name = 1; repeated string device_ids = 2;
                               /* topology = 3 */ }

The fields left out are kept by the parser as unknown fields, so newer kubelets stay
readable. The API gives no pod UID; a pod process's cgroup does, and
collectors/attribution.py joins the two by device.

Failures. A call is bounded by ``timeout``, which must stay below the agent's
``collector_timeout``: that is the deadline of the whole attribution stage. A failed call
logs one warning per distinct error (again after the kubelet has answered in between) and
returns the last good answer while it is younger than ``keep_for`` (30 s, three default
intervals), {} after that. The grace is there because the job accountant ends a pod's job
when its GPUs stop listing it: without it a kubelet restart (an upgrade, a config change)
would split every running pod's energy record in two. It is short because a pod that
really ended would otherwise be shown on its GPU. An answer younger than ``max_age`` is
reused without a call.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from collectors.base import PodRef
from telemetryd.errors import SourceUnavailable

log = logging.getLogger(__name__)

LIST_METHOD = "/v1.PodResourcesLister/List"
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
SHARED_SUFFIX = ".shared"  # the device plugin's time-slicing / MPS with renameByDefault
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as Kubernetes' node e2e tests ask; grpc's default is 4
_REPLICA = re.compile(r"::\d+\Z")  # "GPU-…::3": replica 3 of a time-sliced or MPS GPU
_UUID = re.compile(r"^(?:GPU|MIG)-[0-9A-Za-z/-]+\Z")


class _Devices(Protocol):
    resource_name: str
    device_ids: Sequence[str]


class _Container(Protocol):
    name: str
    devices: Sequence[_Devices]


class _Pod(Protocol):
    name: str
    namespace: str
    containers: Sequence[_Container]


class Listing(Protocol):
    """The part of ``v1.ListPodResourcesResponse`` read here."""

    pod_resources: Sequence[_Pod]


def is_gpu_resource(name: str) -> bool:
    """Whether a device plugin resource is an NVIDIA GPU, a shared one or a MIG profile."""
    return name in (GPU_RESOURCE, GPU_RESOURCE + SHARED_SUFFIX) or name.startswith(
        MIG_RESOURCE_PREFIX
    )


def gpu_devices(listing: Listing) -> dict[str, PodRef]:
    """Device id (GPU or MIG UUID) -> the container it is assigned to, GPU resources only.

    A replica id of a shared GPU (``GPU-…::2``) counts for the GPU itself. When several
    containers share a device, the first in (namespace, pod, container) order is kept:
    one owner per device is what the caller's contract holds (docs/attribution.md).
    """
    found: list[tuple[str, PodRef]] = []
    for pod in listing.pod_resources:
        for container in pod.containers:
            ref = PodRef(pod=pod.name, namespace=pod.namespace, container=container.name)
            for devices in container.devices:
                if is_gpu_resource(devices.resource_name):
                    found += [(_REPLICA.sub("", d), ref) for d in devices.device_ids]
    found.sort(key=lambda item: (item[1].namespace, item[1].pod, item[1].container))
    mapping: dict[str, PodRef] = {}
    for device, ref in found:
        mapping.setdefault(device, ref)
    return mapping


@dataclass(frozen=True, slots=True)
class _Api:
    """grpc and the two message classes, loaded once when a client first opens."""

    grpc: Any
    request: Any
    response: Any
    decode_error: type[Exception]


# (message, ((field, number, repeated, message type or None for string), ...))
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, bool, str | None], ...]], ...] = (
    ("ListPodResourcesRequest", ()),
    ("ListPodResourcesResponse", (("pod_resources", 1, True, "PodResources"),)),
    ("PodResources", (("name", 1, False, None), ("namespace", 2, False, None),
                      ("containers", 3, True, "ContainerResources"))),
    ("ContainerResources", (("name", 1, False, None),
                            ("devices", 2, True, "ContainerDevices"))),
    ("ContainerDevices", (("resource_name", 1, False, None), ("device_ids", 2, True, None))),
)  # fmt: skip


@cache
def _api() -> _Api:
    """Import the extra and build the messages in a private pool (no clash with others)."""
    # grpc's C core logs connection churn (a kubelet restart) to stderr at INFO unless told.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import grpc
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        from google.protobuf.message import DecodeError
    except ImportError as exc:
        raise SourceUnavailable(
            f"kubelet pod-resources needs grpcio and protobuf ({exc.name} is missing):"
            " install telemetryd[k8s]"
        ) from exc
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="telemetryd/podresources/v1/api.proto", package="v1", syntax="proto3"
    )
    for name, fields in _MESSAGES:
        message = proto.message_type.add(name=name)
        for field_name, number, repeated, of in fields:
            message.field.add(
                name=field_name,
                number=number,
                label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL,
                type=field.TYPE_MESSAGE if of else field.TYPE_STRING,
                type_name=f".v1.{of}" if of else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    classes = {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1.{name}"))
        for name, _ in _MESSAGES
    }
    request, response = classes["ListPodResourcesRequest"], classes["ListPodResourcesResponse"]
    return _Api(grpc, request, response, DecodeError)


def message_classes() -> tuple[Any, Any]:
    """``(ListPodResourcesRequest, ListPodResourcesResponse)``, for a stand-in server."""
    api = _api()
    return api.request, api.response


class PodResourcesClient:
    """A client of ``v1.PodResourcesLister`` on the kubelet's unix socket.

    Args:
        socket: path of the kubelet's pod-resources socket.
        timeout: seconds one ``List`` call may take.
        max_age: seconds an answer is reused without asking again.
        keep_for: seconds the last good answer stands in for failed calls.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        socket: str,
        timeout: float,
        *,
        max_age: float = 5.0,
        keep_for: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = socket
        self.timeout = timeout
        self.max_age = max_age
        self.keep_for = keep_for
        self._clock = clock
        self._lock = threading.Lock()
        self._channel: Any = None
        self._list: Any = None
        self._api: _Api | None = None
        self._answer: dict[str, PodRef] | None = None
        self._answered_at = 0.0
        self._logged: set[str] = set()
        self._warned_ids = False

    def open(self) -> None:
        """Check the grpc extra and the socket, and make the channel (it connects lazily).

        Raises:
            SourceUnavailable: the extra is not installed, or the socket is missing, not a
                socket or not writable (connecting to a unix socket needs write access).
        """
        api = _api()
        try:
            mode = os.stat(self.socket).st_mode
        except FileNotFoundError:
            raise SourceUnavailable(
                f"kubelet pod-resources socket {self.socket} does not exist (is this a"
                " Kubernetes node, and is /var/lib/kubelet/pod-resources mounted into the agent?)"
            ) from None
        except OSError as exc:
            raise SourceUnavailable(
                f"kubelet pod-resources socket {self.socket}: {exc.strerror}"
            ) from None
        if not stat.S_ISSOCK(mode):
            raise SourceUnavailable(
                f"{self.socket} is not a unix socket (expected the kubelet's pod-resources"
                " socket, usually /var/lib/kubelet/pod-resources/kubelet.sock)"
            )
        if not os.access(self.socket, os.W_OK):
            raise SourceUnavailable(
                f"kubelet pod-resources socket {self.socket} is not writable by this user"
                " (connecting needs it; the kubelet makes it root's)"
            )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # A restarted kubelet is found again within seconds, not grpc's 2 minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        channel = api.grpc.insecure_channel(f"unix:{os.path.abspath(self.socket)}", options)
        with self._lock:
            if self._channel is not None:  # opened again: do not leak the first channel
                self._channel.close()
            self._api = api
            self._channel = channel
            # The answer is parsed here, not by grpc, which logs a traceback for a bad one.
            self._list = channel.unary_unary(
                LIST_METHOD, request_serializer=api.request.SerializeToString
            )

    def devices(self) -> dict[str, PodRef]:
        """GPU (or MIG) UUID -> the container it is assigned to (see the module docstring)."""
        with self._lock:
            now = self._clock()
            if self._answer is not None and now - self._answered_at < self.max_age:
                return dict(self._answer)
            if self._api is None or self._list is None:
                return {}
            try:
                raw = self._list(self._api.request(), timeout=self.timeout)
                listing = self._api.response.FromString(raw)
            except self._api.grpc.RpcError as exc:
                return self._failed(_describe(exc, self._api.grpc.StatusCode, self.timeout), now)
            except self._api.decode_error:
                return self._failed("the answer is not a v1 ListPodResourcesResponse", now)
            answer = gpu_devices(listing)
            if self._logged:
                log.info("kubelet pod-resources %s answers again", self.socket)
                self._logged.clear()
            self._check_ids(answer)
            self._answer, self._answered_at = answer, now
            return dict(answer)

    def close(self) -> None:
        """Close the channel; safe to call twice, or without ``open``."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._list = None
            self._answer = None

    def _failed(self, what: str, now: float) -> dict[str, PodRef]:
        """Log a new kind of failure once; stand in with a recent answer."""
        if what not in self._logged:
            self._logged.add(what)
            log.warning(
                "kubelet pod-resources %s: List failed: %s (the last answer stands in"
                " for up to %g s)", self.socket, what, self.keep_for,
            )  # fmt: skip
        if self._answer is not None and now - self._answered_at < self.keep_for:
            return dict(self._answer)
        self._answer = None
        return {}

    def _check_ids(self, answer: dict[str, PodRef]) -> None:
        """Warn once about ids that are no UUID: they cannot match a GPU."""
        odd = sorted(d for d in answer if not _UUID.match(d))
        if odd and not self._warned_ids:
            self._warned_ids = True
            log.warning(
                "kubelet pod-resources %s: device ids %s are not GPU or MIG UUIDs, so they"
                " match no GPU (expected the device plugin's default DEVICE_ID_STRATEGY=uuid)",
                self.socket, ", ".join(odd[:4]),
            )  # fmt: skip


def _describe(exc: Any, status: Any, timeout: float) -> str:
    """One line for a failed call (a ``grpc.RpcError``); the same failure, the same line."""
    code = exc.code()
    details = str(exc.details() or "").strip()
    if code == status.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g} s"
    if code == status.UNAVAILABLE:
        # grpc repeats the address (how often depends on its version); the OS error at
        # the end is the news: "…; last error: …: No such file or directory".
        return f"cannot connect ({details.rsplit(': ', 1)[-1] or 'unavailable'})"
    if code == status.UNIMPLEMENTED:
        return "the kubelet does not serve v1.PodResourcesLister/List (Kubernetes 1.20+)"
    name = getattr(code, "name", str(code))
    return f"{name}: {details}" if details else name
