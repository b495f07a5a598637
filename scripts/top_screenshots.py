"""Write docs/top-fleet.svg, docs/top-node.svg and docs/top-alerts.svg from the test fleet.

Run from the repository root with the project's Python:
``.venv/bin/python scripts/top_screenshots.py``. The pictures come from the same fixed data
and clock as the snapshot tests (tests/tui/fleet.py), so they change only when top does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telemetryd.config import TopConfig  # noqa: E402 - after the path is set
from telemetryd.tui import TopApp  # noqa: E402
from tests.tui.fleet import fleet  # noqa: E402

SHOTS = {
    "top-fleet.svg": ("telemetryd top: fleet", []),
    "top-node.svg": ("telemetryd top: node detail", ["down", "enter"]),
    "top-alerts.svg": ("telemetryd top: alerts", ["3"]),
}


async def shoot(name: str, title: str, keys: list[str]) -> None:
    """One screen after ``keys``, exported as Textual draws it (SVG, text stays text)."""
    watch, clock = fleet()
    app = TopApp(TopConfig(), watch=watch, feed=False, clock=clock)
    async with app.run_test(size=(160, 46)) as pilot:
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        (ROOT / "docs" / name).write_text(app.export_screenshot(title=title))
    print(f"wrote docs/{name}")


async def main() -> None:
    """Every screenshot the docs show."""
    for name, (title, keys) in SHOTS.items():
        await shoot(name, title, keys)


if __name__ == "__main__":
    asyncio.run(main())
