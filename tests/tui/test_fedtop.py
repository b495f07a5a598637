"""The national top (``top --federation``): top's own screens over every site's rollups."""

from __future__ import annotations

import asyncio

from telemetryd import fedtop
from telemetryd.config import TopConfig
from telemetryd.connect import mqtt_settings
from telemetryd.fedtop import NationalWatch
from telemetryd.tui import RowTable, TopApp
from tests.integration.mosquitto import Mosquitto, SyncClient
from tests.tui.test_tui import SIZE, order, text
from tests.unit.test_federation_view import NOW, feed, rollup


def test_national_top_shows_every_site_from_rollups() -> None:
    async def run() -> None:
        watch = NationalWatch(prefix="sites", clock=lambda: NOW)
        feed(watch)
        app = TopApp(TopConfig(), watch=watch, feed=False, clock=lambda: NOW)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert "GPUs 3/4 (1 failed)" in text(app, "#totals")
            assert "n2 █✗" in text(app, "#heatmap")  # a GPU lost in the interval
            await pilot.press("2")
            await pilot.pause()
            keys = list(app.screen.query_one("#nodes", RowTable).grid.keys)
            assert sorted(keys) == ["site-a/c1/n1", "site-a/c1/n2", "site-b/c1/n1"]
            await pilot.press("3")
            await pilot.pause()
            (row,) = order(app, "#alert-table")
            assert row.startswith("firing:")

    asyncio.run(run())


def test_national_top_follows_the_national_broker(mosquitto: Mosquitto) -> None:
    with SyncClient(mosquitto.port) as site:
        assert site.connect() == 0
        site.publish("sites/site-x/telemetry/v1/c9/_rollup/n7", rollup("n7", cluster="c9"),
                     retain=True)  # fmt: skip

    async def run() -> None:
        cfg = TopConfig(broker=mosquitto.url)
        app = fedtop.app(cfg, mqtt_settings(cfg, client_id="national-top-test"), "sites")
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(50):
                await pilot.pause(0.1)
                if ("site-x/c9", "n7") in app.live.nodes:
                    break
            assert ("site-x/c9", "n7") in app.live.nodes
            assert app.title == "telemetryd top --federation (sites/)"
            assert not app.cfg.allow_silence  # silence requests never cross a bridge

    asyncio.run(run())
