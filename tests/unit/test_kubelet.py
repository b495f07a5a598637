"""The kubelet pod-resources client against a real gRPC server on a unix socket.

The kubelet itself cannot run in CI (it needs a container runtime, root and a cluster), so
tests/kubeletstub.py serves the same ``v1.PodResourcesLister/List`` with grpcio, its answer
encoded by hand from the kubelet's api.proto: the client's field numbers are checked
against that, not against themselves.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors import kubelet
from collectors.attribution import Attributor
from collectors.base import PodRef
from collectors.kubelet import PodResourcesClient, gpu_devices, message_classes
from telemetryd.config import AttributionConfig
from telemetryd.errors import SourceUnavailable
from telemetryd.model import Gpu, GpuOwner, MigDevice
from tests.kubeletstub import Container, Pod, StubKubelet, encode_list_response

GPU_A = "GPU-0b5a7c1e-54a0-6e6c-2f4f-1d1b7e1f0a01"
GPU_B = "GPU-0b5a7c1e-54a0-6e6c-2f4f-1d1b7e1f0a02"
GPU_M = "GPU-0b5a7c1e-54a0-6e6c-2f4f-1d1b7e1f0a03"
MIG_1 = "MIG-5f1a3c2d-8e4b-5a6f-9c0d-1e2f3a4b5c61"
MIG_2 = "MIG-5f1a3c2d-8e4b-5a6f-9c0d-1e2f3a4b5c62"

PODS = [
    Pod("train-0", "ml", [
        Container("main", [("nvidia.com/gpu", [GPU_A, GPU_B]), ("cpu", [])], cpu_ids=[2, 3]),
        Container("sidecar"),
    ]),
    Pod("infer-7", "serving", [
        Container("model", [("nvidia.com/mig-1g.10gb", [MIG_1])]),
        Container("fpga", [("example.com/fpga", ["fpga0"])]),
    ]),
    Pod("coredns-1", "kube-system", [Container("coredns")]),
]  # fmt: skip

WANT = {
    GPU_A: PodRef("train-0", "ml", "main"),
    GPU_B: PodRef("train-0", "ml", "main"),
    MIG_1: PodRef("infer-7", "serving", "model"),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "pod-resources" / "kubelet.sock"


@pytest.fixture
def stub(sock: Path) -> Iterator[StubKubelet]:
    sock.parent.mkdir()
    server = StubKubelet(sock, list(PODS)).start()
    yield server
    server.stop()


def client(sock: Path, **kw: object) -> PodResourcesClient:
    c = PodResourcesClient(str(sock), kw.pop("timeout", 2.0), **kw)  # type: ignore[arg-type]
    c.open()
    return c


def test_wire_bytes_match_the_kubelet_proto() -> None:
    # The client's messages, serialised, are byte for byte the hand-encoded api.proto.
    _, response = message_classes()
    msg = response()
    pod = msg.pod_resources.add(name="train-0", namespace="ml")
    dev = pod.containers.add(name="main").devices.add(resource_name="nvidia.com/gpu")
    dev.device_ids.extend([GPU_A, GPU_B])
    hand = encode_list_response(
        [Pod("train-0", "ml", [Container("main", [("nvidia.com/gpu", [GPU_A, GPU_B])])])],
        extras=False,
    )
    assert msg.SerializeToString() == hand


def test_gpu_and_mig_devices_map_to_their_containers(stub: StubKubelet, sock: Path) -> None:
    c = client(sock)
    try:
        assert c.devices() == WANT
    finally:
        c.close()
    assert stub.requests == [b""]  # ListPodResourcesRequest is empty


def test_shared_gpu_replicas_count_for_the_gpu() -> None:
    # Time-slicing / MPS: the device plugin hands out "GPU-…::<replica>" ids.
    raw = encode_list_response([
        Pod("b", "team2", [Container("c", [("nvidia.com/gpu.shared", [f"{GPU_A}::1"])])]),
        Pod("a", "team2", [Container("c", [("nvidia.com/gpu.shared", [f"{GPU_A}::0"])])]),
        Pod("z", "team1", [Container("c", [("nvidia.com/gpu", [f"{GPU_B}::3"])])]),
    ])  # fmt: skip
    _, response = message_classes()
    assert gpu_devices(response.FromString(raw)) == {
        GPU_A: PodRef("a", "team2", "c"),  # the first in (namespace, pod, container) order
        GPU_B: PodRef("z", "team1", "c"),
    }


def test_answer_is_reused_for_max_age(stub: StubKubelet, sock: Path) -> None:
    clock = Clock()
    c = client(sock, max_age=5.0, clock=clock)
    try:
        assert c.devices() == WANT
        stub.pods = [Pod("next", "ml", [Container("main", [("nvidia.com/gpu", [GPU_A])])])]
        clock.now += 4.9
        assert c.devices() == WANT
        assert stub.calls == 1
        clock.now += 0.2
        assert c.devices() == {GPU_A: PodRef("next", "ml", "main")}
        assert stub.calls == 2
    finally:
        c.close()


def test_missing_socket_says_so(sock: Path) -> None:
    c = PodResourcesClient(str(sock), 1.0)
    with pytest.raises(SourceUnavailable, match=r"kubelet\.sock does not exist"):
        c.open()
    c.close()
    c.close()


def test_a_file_that_is_not_a_socket_says_so(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    path.write_text("")
    with pytest.raises(SourceUnavailable, match="is not a unix socket"):
        PodResourcesClient(str(path), 1.0).open()


def test_missing_extra_names_the_install(
    stub: StubKubelet, sock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubelet._api.cache_clear()
    monkeypatch.setitem(sys.modules, "grpc", None)
    try:
        with pytest.raises(SourceUnavailable, match=r"install telemetryd\[k8s\]"):
            PodResourcesClient(str(sock), 1.0).open()
    finally:
        kubelet._api.cache_clear()


def test_slow_kubelet_is_cut_at_the_timeout(
    stub: StubKubelet, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub.delay = 10.0
    c = client(sock, timeout=0.3, max_age=0.0)
    try:
        started = time.monotonic()
        assert c.devices() == {}
        assert c.devices() == {}
        assert time.monotonic() - started < 3.0
    finally:
        c.close()
    failures = [r.getMessage() for r in caplog.records if "List failed" in r.getMessage()]
    assert len(failures) == 1  # once per distinct error, not per interval
    assert "no answer within 0.3 s" in failures[0]


def test_kubelet_down_midway_keeps_the_last_answer_then_drops_it(
    stub: StubKubelet, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collectors.kubelet")
    clock = Clock()
    c = client(sock, timeout=1.0, max_age=0.0, keep_for=30.0, clock=clock)
    try:
        assert c.devices() == WANT
        stub.stop()
        clock.now += 10
        assert c.devices() == WANT  # a kubelet restart does not end the pods' jobs
        clock.now += 25
        assert c.devices() == {}  # 35 s without an answer: the pods are not claimed any more
        assert c.devices() == {}
        # Four failed calls, each kind logged once (grpc may first see the closing
        # connection, then the missing socket: two kinds at most).
        failures = [r.getMessage() for r in caplog.records if "List failed" in r.getMessage()]
        assert 1 <= len(failures) == len(set(failures)) <= 2
        assert all(r.levelno == logging.WARNING for r in caplog.records if "List" in r.msg)
        assert "cannot connect (No such file or directory)" in failures[-1]
        stub.pods = PODS[:1]
        stub.start()  # the kubelet is back, on the same path
        deadline = time.monotonic() + 10
        while (got := c.devices()) == {} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got == {GPU_A: WANT[GPU_A], GPU_B: WANT[GPU_B]}
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        c.close()


def test_garbage_answer_is_one_clear_line(
    stub: StubKubelet, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub.raw = b"\xff\xff\xff\xff"
    c = client(sock, max_age=0.0)
    try:
        assert c.devices() == {}
    finally:
        c.close()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "not a v1 ListPodResourcesResponse" in line


def test_socket_without_the_service(sock: Path, caplog: pytest.LogCaptureFixture) -> None:
    sock.parent.mkdir()
    server = StubKubelet(sock).start(serve_list=False)
    c = client(sock)
    try:
        assert c.devices() == {}
    finally:
        c.close()
        server.stop()
    assert any("does not serve v1.PodResourcesLister/List" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_index_ids_are_warned_about_once(
    stub: StubKubelet, sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub.pods = [Pod("p", "ns", [Container("c", [("nvidia.com/gpu", ["0", "1"])])])]
    c = client(sock, max_age=0.0)
    try:
        assert c.devices() == {"0": PodRef("p", "ns", "c"), "1": PodRef("p", "ns", "c")}
        c.devices()
    finally:
        c.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DEVICE_ID_STRATEGY=uuid" in warnings[0]


def test_closed_client_answers_nothing(stub: StubKubelet, sock: Path) -> None:
    c = client(sock)
    c.close()
    assert c.devices() == {}
    assert stub.calls == 0


def _gpu(index: int, uuid: str, mig: list[MigDevice] | None = None) -> Gpu:
    return Gpu(index=index, uuid=uuid, pci_bus_id=f"00000000:{index + 1:02x}:00.0",
               name="NVIDIA H100 80GB HBM3", driver="550.54.15", mig=mig or [])  # fmt: skip


def test_attributor_sets_owners_from_the_kubelet(stub: StubKubelet, sock: Path) -> None:
    stub.pods = [*PODS, Pod("infer-8", "serving", [
        Container("model", [("nvidia.com/mig-3g.40gb", [MIG_2])])
    ])]  # fmt: skip
    cfg = AttributionConfig(kubelet_socket=str(sock), kubelet_timeout=2.0)
    attributor = Attributor(cfg)
    assert attributor.open() == {}
    gpus = [
        _gpu(0, GPU_A),
        _gpu(1, GPU_B),
        _gpu(2, GPU_M, [MigDevice(uuid=MIG_1, gi_id=1), MigDevice(uuid=MIG_2, gi_id=2)]),
        _gpu(3, "GPU-00000000-0000-0000-0000-000000000004"),
    ]
    try:
        attributor.attribute(gpus)
    finally:
        attributor.close()
    main = GpuOwner(source="kubelet", pod="train-0", namespace="ml", container="main")
    assert gpus[0].owners == [main]
    assert gpus[1].owners == [main]
    assert gpus[2].owners == [
        GpuOwner(source="kubelet", gi_id=1, pod="infer-7", namespace="serving",
                 container="model"),
        GpuOwner(source="kubelet", gi_id=2, pod="infer-8", namespace="serving",
                 container="model"),
    ]  # fmt: skip
    assert gpus[3].owners is None


def test_attributor_reports_a_missing_socket(sock: Path) -> None:
    attributor = Attributor(AttributionConfig(kubelet_socket=str(sock)))
    notes = attributor.open()
    assert "does not exist" in notes["kubelet"]
    assert attributor.kubelet is None
