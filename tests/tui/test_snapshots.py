"""Snapshots of top's main screens over the fixed fleet (update: pytest --snapshot-update).

The clock is fixed, so ages and "data age" are the same on every run; a change in these
pictures is a change an operator would see, to be looked at and accepted on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from telemetryd.config import TopConfig
from telemetryd.tui import TopApp
from tests.tui.fleet import fleet

SIZE = (160, 50)


def app() -> TopApp:
    watch, clock = fleet()
    return TopApp(TopConfig(), watch=watch, feed=False, clock=clock)


def test_fleet_view(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), terminal_size=SIZE)


def test_node_detail(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), press=["down", "enter"], terminal_size=SIZE)


def test_alerts_panel(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), press=["3"], terminal_size=SIZE)


def test_nodes_sorted_and_filtered(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(app(), press=["2", "s", "s", "s", "c"], terminal_size=SIZE)
