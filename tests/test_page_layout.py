"""The demo page on a phone-sized screen (390 px wide) during a call, and the latency
table's sum: headless Chromium as in tests/test_browser.py.

At 390 px the page must not scroll sideways and every table must stay inside its card,
with the numbers of a real call and a measured round trip filled in (long texts appear
only then). The "Sum of the stages above" row adds "Everything else" once a round trip
was measured. A screenshot lands in test-artifacts/page-390px.png.
"""
from __future__ import annotations

import pytest

from test_browser import ARTIFACTS, browser_ready, identity_model, num  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

LAYOUT = """() => {
  const doc = document.documentElement;
  const inside = (child, parent) => {
    const c = document.getElementById(child).getBoundingClientRect();
    const p = document.getElementById(parent).getBoundingClientRect();
    return c.left >= p.left - 0.5 && c.right <= p.right + 0.5;
  };
  const wide = [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > doc.clientWidth + 0.5)
    .map((e) => `${e.tagName.toLowerCase()}#${e.id}`);
  return {
    scrollWidth: doc.scrollWidth, viewport: window.innerWidth, clientWidth: doc.clientWidth,
    latencyTableInCard: inside('latency-table', 'latency-card'),
    rttTableInCard: inside('rtt-table', 'latency-card'),
    statsInCard: inside('stats-list', 'stats-card'),
    wider: wide.slice(0, 10),
  };
}"""


def test_page_fits_a_390px_screen_and_the_sum_includes_everything_else(browser_ready, identity_model, tmp_path):  # noqa: F811
    import latency_browser as lb

    fake = lb.write_voice_wav(tmp_path / "voice.wav", seconds=60.0)
    with lb.server_process(str(identity_model), tmp_path / "server.log") as url, lb.browser(fake) as ctx:
        page = ctx.new_page()
        page.set_viewport_size({"width": 390, "height": 844})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(url + "/")
        page.wait_for_function("() => window.voipfilterDemo && window.voipfilterDemo.ready")
        before = page.evaluate(LAYOUT)
        assert before["scrollWidth"] <= before["viewport"], before
        assert "measure" in page.inner_text("#lat-sum-src")  # no round trip yet: says what is missing

        lb.start_call(page, url, "mic", settle_s=0.5)
        for _ in range(3):  # a loaded machine can lose a marker (see test_browser.py)
            state = lb.measure(page, runs=1)
            if state["roundTrip"]["onMedian"] is not None:
                break
        assert state["roundTrip"]["onMedian"] is not None, state["roundTrip"]
        page.wait_for_function("() => window.voipfilterDemo.latency.otherMs != null", timeout=5000)
        # one snapshot: the page re-renders the table every second, state and cells together
        state, shown = page.evaluate("() => [JSON.parse(JSON.stringify(window.voipfilterDemo)),"
                                     " [document.getElementById('lat-sum').textContent,"
                                     " document.getElementById('lat-other').textContent]]")
        layout = page.evaluate(LAYOUT)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-390px.png"), full_page=True)

        assert layout["scrollWidth"] <= layout["viewport"], layout  # no sideways scroll
        assert layout["latencyTableInCard"] and layout["rttTableInCard"] and layout["statsInCard"], layout
        assert not layout["wider"], layout

        # the sum row: every stage above it, "Everything else" included
        lat = state["latency"]
        assert lat["otherMs"] is not None and lat["stagesMs"] > 0, lat
        assert lat["sumMs"] == pytest.approx(lat["stagesMs"] + lat["otherMs"]), lat
        assert lat["sumMs"] == pytest.approx(max(state["roundTrip"]["onMedian"], lat["stagesMs"])), (lat, state["roundTrip"])
        # what the page shows: the sum cell is the other rows plus "Everything else"
        assert num(shown[0]) == pytest.approx(lat["sumMs"], abs=0.06)
        assert num(shown[1]) == pytest.approx(lat["otherMs"], abs=0.06)
        lb.hang_up(page)
        assert not errors, errors
