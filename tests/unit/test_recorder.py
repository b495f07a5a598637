"""Recording a card and replaying it gives back exactly what the card said.

On a GPU node the recorder wraps pynvml; here it wraps a fake replaying a recorded card,
which exercises the same proxy: record -> dump -> load -> replay must be lossless.
"""

from __future__ import annotations

import json

import pytest

from collectors.fakenvml import FORMAT, FakeNvml, load_recording
from collectors.nvml import NvmlBackend
from collectors.nvml_record import RecordingNvml
from telemetryd.config import NvmlConfig
from tests.nvmlfakes import RECORDINGS, recording, sample


def _two_samples(lib):
    b = NvmlBackend(lambda: lib, NvmlConfig())
    b.open()
    try:
        return [sample(b).gpus for _ in range(2)]
    finally:
        b.close()


@pytest.mark.parametrize("card", sorted(RECORDINGS))
def test_record_then_replay_is_lossless(card, tmp_path):
    original = FakeNvml(recording(card, gpus=2))
    recorder = RecordingNvml(original)
    recorded_run = _two_samples(recorder)
    path = tmp_path / "card.json"
    recorder.dump(path)
    data = load_recording(path)
    assert data["format"] == FORMAT and "recorded by telemetryd" in data["provenance"]
    assert len(data["devices"]) == 2
    replay = FakeNvml(data)
    assert _two_samples(replay) == recorded_run
    assert replay.unrecorded == set()


def test_errors_are_recorded_by_name(tmp_path):
    recorder = RecordingNvml(FakeNvml(recording("h100")))
    _two_samples(recorder)
    recorder.dump(tmp_path / "r.json")
    device = json.loads((tmp_path / "r.json").read_text())["devices"][0]
    assert device["nvmlDeviceGetFanSpeed"] == {"error": "NVML_ERROR_NOT_SUPPORTED"}
    assert device["field:83"]["value"] > 0
    assert "gpm:2" in device
