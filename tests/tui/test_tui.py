"""top driven by keys (Textual's Pilot) over a fixed fleet: what the operator sees change."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from textual.content import Content
from textual.widgets import DataTable, Input, Static

from telemetryd.alerting.wire import (
    SilenceInfo,
    Silences,
    decode_silence_request,
    request_silence_id,
)
from telemetryd.codec import encode_json
from telemetryd.config import TopConfig
from telemetryd.tui import DetailScreen, Heatmap, HelpScreen, RowTable, SilenceScreen, TopApp
from tests.integration.mosquitto import Mosquitto
from tests.tui.fleet import NOW, S, fleet

SIZE = (160, 50)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the suite has no async plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def app_for(*, accepts: bool = True, **cfg: object) -> TopApp:
    watch, clock = fleet(accepts=accepts)
    return TopApp(TopConfig(**cfg), watch=watch, feed=False, clock=clock)  # type: ignore[arg-type]


def text(app: TopApp, selector: str) -> str:
    if selector == "#heatmap":  # top's own line-API widget: its lines of styled runs
        heat = app.screen.query_one(selector, Heatmap)
        return "\n".join("".join(t for t, _ in line) for line in heat.lines)
    content = app.screen.query_one(selector, Static).content
    return content.plain if isinstance(content, Content) else str(content)


def order(app: TopApp, table: str = "#nodes") -> list[str]:
    if table == "#nodes":  # the node table is top's own line-API table
        return list(app.screen.query_one(table, RowTable).grid.keys)
    t = app.screen.query_one(table, DataTable)
    return [str(row.key.value) for row in t.ordered_rows]


@sync
async def test_fleet_view_shows_totals_heatmap_and_states() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        totals = text(app, "#totals")
        assert "GPUs 47/48 (1 failed)" in totals and "1 offline 1 silent" in totals
        heat = text(app, "#heatmap")
        assert "gpu-02 █████✗██" in heat and "gpu-04 ░░░░░░░░" in heat
        assert "utilisation" in text(app, "#legend")
        await pilot.press("m")
        assert "temperature" in text(app, "#legend") and "heatmap: temperature" in text(
            app, "#viewbar"
        )
        status = text(app, "#status")
        assert status.startswith("connected to mqtt://broker.example:1883")
        assert "data age 1s" in status


@sync
async def test_sorting_changes_row_order() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert order(app)[:3] == ["c1/gpu-01", "c1/gpu-02", "c1/gpu-03"]
        await pilot.press("s", "s", "s", "s")  # node -> state -> gpus -> util -> power
        assert app.state.sort == "power" and order(app)[0] == "c1/gpu-03"
        await pilot.press("S")
        assert order(app)[0] == "c1/gpu-06"  # least power first; offline and silent last
        assert set(order(app)[-2:]) == {"c1/gpu-04", "c1/gpu-05"}
        await pilot.click("#nodes", offset=(74, 0))  # the "last seen" header
        assert app.state.sort == "seen" and order(app)[0] == "c1/gpu-05"
        assert "sort seen" in text(app, "#viewbar")


@sync
async def test_text_and_regex_filters_and_a_bad_regex() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "slash", *"dgx", "enter")
        assert order(app) == ["c2/dgx-a", "c2/dgx-b"]
        assert "filter: text 'dgx'" in text(app, "#viewbar")
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        box.value = "re:^gpu-0[45]$"
        await pilot.press("enter")
        assert order(app) == ["c1/gpu-04", "c1/gpu-05"]
        await pilot.press("slash")
        box.value = "~gpu-[0"
        await pilot.press("enter")
        assert order(app) == ["c1/gpu-04", "c1/gpu-05"]  # the old filter stays
        assert text(app, "#message").startswith("filter '~gpu-[0': bad regular expression")
        await pilot.press("slash")
        box.value = ""
        await pilot.press("enter")
        assert len(order(app)) == 8 and text(app, "#message") == ""
        await pilot.press("c", "c")
        assert order(app) == ["c2/dgx-a", "c2/dgx-b"]
        await pilot.press("c", "f")
        assert order(app) == ["c1/gpu-02", "c1/gpu-03", "c1/gpu-04"]
        assert "heat" not in text(app, "#viewbar")  # nodes view: no heatmap


@sync
async def test_filter_by_job_shows_the_nodes_of_that_job() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "slash", *"81234", "enter")
        assert order(app) == ["c1/gpu-01", "c1/gpu-02"]  # job 81234 spans two nodes
        assert "filter: text '81234'" in text(app, "#viewbar")
        table = app.screen.query_one("#nodes", RowTable)
        assert "81234, 81240" in "".join(t for t, _ in table.grid.row(1))
        jobs_x = sum(table.grid.widths[:-1]) + 2 * (len(table.grid.widths) - 1) + 2
        await pilot.click("#nodes", offset=(jobs_x, 0))  # the "jobs / pods" header sorts
        assert app.state.sort == "jobs" and "sort jobs" in text(app, "#viewbar")
        await pilot.press("1")
        heat = text(app, "#heatmap")
        assert "gpu-01 " in heat and "gpu-02 " in heat and "gpu-03" not in heat
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = "~^ml-team/"
        await pilot.press("enter")
        assert order(app) == ["c2/dgx-a"]  # a pod, by namespace
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.key == ("c2", "dgx-a")
        gpus = app.screen.query_one("#gpus", DataTable)
        assert "ml-team/llama-train-0" in str(gpus.get_row("0")[1])
        await pilot.press("escape", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "/81234: the nodes" in str(app.screen.query_one("#help", Static).content)


@sync
async def test_drill_down_shows_gpus_processes_and_xid_meaning() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down", "enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.key == ("c1", "gpu-02")
        assert text(app, "#detail-header").startswith("c1/gpu-02  online")
        gpus = app.screen.query_one("#gpus", DataTable)
        assert gpus.row_count == 8
        assert "FAILED: gpu_lost" in str(gpus.get_row("5")[-1])
        procs = app.screen.query_one("#procs", DataTable)
        assert procs.row_count == 8 and "81234.0" in str(procs.get_row_at(0)[3])
        assert "81240" in str(gpus.get_row("5")[1])  # the failed GPU still names its job
        events = text(app, "#events")
        assert "GPU 5 XID 79 GPU has fallen off the bus" in events
        assert "GpuLost" in text(app, "#node-alerts")
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)
        assert order(app)[1] == "c1/gpu-02"


@sync
async def test_node_table_keys_and_clicks_move_the_cursor_and_open_a_node() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "end")
        table = app.screen.query_one("#nodes", RowTable)
        assert table.grid.selected() == order(app)[-1] == "c2/dgx-b"
        await pilot.press("home", "pagedown", "up")
        assert table.grid.selected() == order(app)[-2]
        await pilot.click("#nodes", offset=(3, 3))  # the third row: the cursor moves there
        assert table.grid.selected() == order(app)[2] and not isinstance(app.screen, DetailScreen)
        await pilot.click("#nodes", offset=(3, 3))  # and a second click opens it
        assert isinstance(app.screen, DetailScreen) and app.screen.key == ("c1", "gpu-03")


@sync
async def test_alerts_panel_lists_firing_pending_silenced_with_age() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        assert order(app, "#alert-table") == [
            f"{state}:{fp}" for state, fp in (
                (r.state, r.alert.fingerprint)
                for r in __import__("telemetryd.topalerts").topalerts.alert_rows(app.live, NOW)
            )
        ]  # fmt: skip
        table = app.screen.query_one("#alert-table", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert [r[0].split("]")[-2].split("[")[0] for r in rows] == [
            "firing", "firing", "firing", "pending", "silenced",
        ]  # fmt: skip
        assert any("5m00s" in c for c in rows[0]) and any("1h06m" in c for c in rows[-1])
        assert "RMA ticket 4711" in text(app, "#silences")
        app.live.clock.now = NOW + 60 * S  # type: ignore[attr-defined]
        app.redraw(force=True)
        await pilot.pause()
        assert any("6m00s" in str(c) for c in table.get_row_at(0))


@sync
async def test_help_on_question_mark() -> None:
    app = app_for()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@sync
async def test_silence_is_read_only_by_default() -> None:
    app = app_for()
    published: list[object] = []
    app.publish_silence = lambda *a: published.append(a)  # type: ignore[method-assign,assignment,return-value]
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("x")
        assert "alerts view" in text(app, "#message")
        await pilot.press("3", "x")
        assert not isinstance(app.screen, SilenceScreen)
        assert text(app, "#message").startswith("top is read-only: set [top] allow_silence")
    assert published == []


@sync
async def test_silence_needs_an_aggregator_that_accepts() -> None:
    app = app_for(accepts=False, allow_silence=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "x")
        assert not isinstance(app.screen, SilenceScreen)
        assert "does not accept silences over MQTT" in text(app, "#message")


@sync
async def test_silence_dialog_refuses_a_bad_duration() -> None:
    app = app_for(allow_silence=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3", "x")
        assert isinstance(app.screen, SilenceScreen)
        assert app.screen.query_one("#matchers", Input).value == (
            'alertname="GpuThermalThrottle", cluster="c1", node="gpu-03", gpu="3"'
        )
        assert app.screen.query_one("#duration", Input).value == "2h"
        app.screen.query_one("#duration", Input).value = "soon"
        await pilot.click("#ok")
        assert isinstance(app.screen, SilenceScreen)
        assert "duration: expected a duration" in text(app, "#dialog-error")
        await pilot.press("escape")
        assert not isinstance(app.screen, SilenceScreen)


@pytest.mark.integration
@sync
async def test_silence_is_published_to_the_broker(mosquitto: Mosquitto) -> None:
    received: list[tuple[str, bytes]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="silence-listener")
    sub.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("telemetry/v1/+/_silences/request", qos=1)
    sub.loop_start()
    try:
        watch, clock = fleet()
        cfg = TopConfig(broker=mosquitto.url, allow_silence=True, silence_duration="30m")
        app = TopApp(cfg, watch=watch, feed=False, clock=clock)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.sleep(0.3)  # the listener's SUBACK
            await pilot.press("3", "down", "x")
            assert isinstance(app.screen, SilenceScreen)
            app.screen.query_one("#comment", Input).value = "card swap at 14:00"
            await pilot.click("#ok")
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert text(app, "#message").startswith('silence requested: alertname="GpuLost"')
            for _ in range(50):
                if received:
                    break
                await asyncio.sleep(0.1)
            topic, payload = received[0]
            assert topic == "telemetry/v1/c1/_silences/request"
            request = decode_silence_request(payload)
            assert request.matchers == ['alertname="GpuLost"', 'cluster="c1"', 'node="gpu-02"',
                                        'gpu="5"']  # fmt: skip
            assert request.duration_s == 1800 and request.comment == "card swap at 14:00"
            assert "@" in request.created_by and json.loads(payload)["schema"] == 1
            # the aggregator lists it in its retained _silences: top says it is active
            info = SilenceInfo(id=request_silence_id(request.request_id),
                               matchers=request.matchers, starts_ns=NOW,
                               ends_ns=NOW + 1800 * S, created_by=request.created_by)  # fmt: skip
            app.live.ingest("telemetry/v1/c1/_silences", encode_json(
                Silences(time_ns=NOW, silences=[info], accepts_requests=True)))  # fmt: skip
            app.redraw()
            await pilot.pause()
            assert text(app, "#message").startswith('silence active: alertname="GpuLost"')
            assert order(app, "#alert-table")[-1].startswith("silenced:")
    finally:
        sub.loop_stop()
        sub.disconnect()


@pytest.mark.integration
@sync
async def test_top_follows_the_broker(mosquitto: Mosquitto) -> None:
    from tests.tui.fleet import report

    app = TopApp(TopConfig(broker=mosquitto.url, refresh=0.1))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="agent-standin")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                if app.live.connected:
                    break
                await asyncio.sleep(0.05)
            assert app.live.connected
            pub.publish(
                "telemetry/v1/c1/gpu-01/report", report("gpu-01", 0, NOW), qos=1
            ).wait_for_publish()
            for _ in range(100):
                await pilot.pause(0.05)
                if order(app) == ["c1/gpu-01"]:
                    break
            assert order(app) == ["c1/gpu-01"]
            assert text(app, "#status").startswith(f"connected to {mosquitto.url}")
    finally:
        pub.loop_stop()
        pub.disconnect()
