"""The dashboard in a real headless Chromium: list -> detail -> retry/cancel, layout at 900, 1280 and 1920 px.

A real `decortask dashboard` and a real `decortask worker` run as subprocesses on one SQLite file (the
`live_system` of test_dashboard.py); Debian's chromium and chromium-driver drive the page through
Selenium. Screenshots of every layout are kept in `test-artifacts/dashboard/` (CI keeps that folder).
Skipped where Chromium is absent; failing under CI=true (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import pytest
from test_dashboard import TOKEN, XSS, DashboardProcess, Live, live_system
from workers import REPO, WorkerProcess, poll_until

from decortask import TaskStatus

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
SECRET = "hunter2"

# One xdist worker runs them all (--dist loadgroup): each worker would start its own Chromium and live system.
pytestmark = pytest.mark.xdist_group("dashboard-browser")


def _require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the dev extra)")
    if missing:
        message = f"browser tests need {', '.join(missing)} (apt install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Scene(Live):
    """The live system and the ids of the tasks the tests look at."""

    ids: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    """A worker and a dashboard on one SQLite file, with finished, failed and secret-bearing tasks in it."""
    _require_chromium()
    with live_system("sqlite", tmp_path_factory.mktemp("browser")) as live:
        handles = [bt.add.apply_async(args=(n, n), app=live.app) for n in range(40)]
        failed = bt.always_fails.apply_async(app=live.app)
        marked = bt.report.apply_async(args=(XSS,), app=live.app)
        leaky = bt.leaks_a_secret.apply_async(args=(f"postgres://admin:{SECRET}@db/app",), app=live.app)
        for handle in handles:
            live.wait_for(handle.id, TaskStatus.SUCCESS)
        live.wait_for(failed.id, TaskStatus.FAILED)
        live.wait_for(marked.id, TaskStatus.SUCCESS)
        live.wait_for(leaky.id, TaskStatus.FAILED)
        ids = {"failed": failed.id, "marked": marked.id, "leaky": leaky.id}
        yield Scene(live.app, live.dashboard, live.worker, live.effects, ids)


@pytest.fixture(scope="module")
def browser(system: Scene) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        _viewport(driver, 1280, 800)
        _login(driver, system.dashboard.url)
        yield driver
    finally:
        driver.quit()


def _login(driver: Any, url: str) -> None:
    """Log in through the form, as a person does (the session cookie is per host, not per port)."""
    driver.delete_all_cookies()
    driver.get(url + "/login")
    driver.find_element("name", "token").send_keys(TOKEN)
    driver.find_element("css selector", ".login-form button").click()
    _until(driver, lambda: driver.current_url.rstrip("/") == url, "the login redirect")


def _viewport(driver: Any, width: int, height: int) -> None:
    # The window size of headless Chromium includes no browser chrome, but the metrics override makes the
    # page's innerWidth x innerHeight exactly what a 1280x800 screen shows.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def _until(driver: Any, check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    found: list[Any] = []

    def done() -> bool:
        value = check()
        if value:
            found.append(value)
        return bool(value)

    poll_until(done, timeout, what, interval=0.1)
    return found[-1]


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _until(driver, lambda: driver.execute_script(ROW_COUNT) > 0, "the task rows")


def _shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


ROW_COUNT = "return document.querySelectorAll('#tasks tbody tr').length"
#: Rows wholly inside the viewport, and the distinct heights of all rows.
VISIBLE_ROWS = """
const rows = [...document.querySelectorAll('#tasks tbody tr')];
return {
  visible: rows.filter((r) => { const b = r.getBoundingClientRect(); return b.top >= 0 && b.bottom <= innerHeight; }).length,
  heights: [...new Set(rows.map((r) => Math.round(r.getBoundingClientRect().height)))],
};
"""
#: Where the list, its header cells and the detail sit, and whether the page scrolls sideways.
LAYOUT = """
const box = (el) => { const b = el.getBoundingClientRect(); return {left: b.left, right: b.right, top: b.top, bottom: b.bottom}; };
const detail = document.getElementById('detail');
return {
  width: innerWidth,
  scrollWidth: document.documentElement.scrollWidth,
  headers: [...document.querySelectorAll('#tasks thead th')].map((th) => ({text: th.textContent.trim(), ...box(th)})),
  list: box(document.querySelector('#tasks')),
  detail: detail.hidden ? null : box(detail),
};
"""


def test_at_least_25_one_line_rows_fit_a_1280x800_screen(system: Scene, browser: Any) -> None:
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + "/")
    rows = _js(browser, VISIBLE_ROWS)
    _shot(browser, "list-1280x800")
    assert rows["visible"] >= 25, rows
    assert len(rows["heights"]) == 1 and rows["heights"][0] <= 26, rows  # one line each, none wraps


@pytest.mark.parametrize("width,height", [(900, 700), (1280, 800), (1920, 1080)])
def test_layout_holds_and_the_detail_opens_beside_the_list(
    system: Scene, browser: Any, width: int, height: int
) -> None:
    _viewport(browser, width, height)
    _open(browser, system.dashboard.url + "/")
    before = _js(browser, LAYOUT)
    assert before["scrollWidth"] <= width, before  # nothing pushes the page sideways
    for header in before["headers"]:
        assert header["left"] >= 0 and header["right"] <= width + 0.5, header  # every column on screen
    assert "Created" in [h["text"].split()[0] for h in before["headers"] if h["text"]]
    browser.find_elements("css selector", "#tasks tbody tr")[2].click()
    _until(browser, lambda: _js(browser, LAYOUT)["detail"], "the detail to open")
    after = _js(browser, LAYOUT)
    _shot(browser, f"detail-{width}x{height}")
    detail = after["detail"]
    # Beside the list (or over its right side on a narrow screen), starting at the top: never below it.
    assert detail["top"] < after["list"]["top"] + 60, after
    assert detail["left"] > after["list"]["left"] + 100 and detail["right"] <= width + 0.5, after
    assert after["scrollWidth"] <= width, after


#: The throughput chart's bars: per final state the sum of their task counts, and each bar's height per task.
CHART_BARS = """
const bars = [...document.querySelectorAll('#chart-throughput rect[data-state]')];
const sums = {};
for (const b of bars) sums[b.dataset.state] = (sums[b.dataset.state] || 0) + Number(b.dataset.count);
return {
  sums: sums,
  perTask: bars.map((b) => Number(b.getAttribute('height')) / Number(b.dataset.count)),
  charts: [...document.querySelectorAll('#view-charts svg.chart-svg')].map((s) => s.getBoundingClientRect().right),
  scrollWidth: document.documentElement.scrollWidth,
};
"""


def _ended_in_the_last_hour(system: Scene) -> dict[str, int]:
    """The store's count of tasks per final state that ended in the last hour (what the chart must show)."""
    now = time.time()
    counts: dict[str, int] = {}
    for record in system.app.store.list_tasks(_query(created_after=now - 7200, limit=500)):
        if record.status.terminal and record.finished_at is not None and record.finished_at > now - 3540:
            counts[record.status.value] = counts.get(record.status.value, 0) + 1
    return counts


@pytest.mark.parametrize("width,height", [(900, 700), (1280, 800), (1920, 1080)])
def test_charts_show_the_tasks_that_ended_by_final_state(
    system: Scene, browser: Any, width: int, height: int
) -> None:
    _viewport(browser, width, height)
    browser.get(system.dashboard.url + "/?view=charts")
    expected: dict[str, int] = {}

    def matches() -> Any:
        expected.clear()
        expected.update(_ended_in_the_last_hour(system))
        drawn = _js(browser, CHART_BARS)
        return drawn if drawn["sums"] == expected and len(drawn["charts"]) == 4 else None

    # The page redraws every 15 s from a scan cached 15 s: a task that ended just before may take 30 s.
    drawn = _until(browser, matches, "bars that add up to the store's ended tasks", timeout=60)
    _shot(browser, f"charts-{width}x{height}")
    assert expected["SUCCESS"] >= 41 and expected["FAILED"] >= 2, expected  # this module's tasks
    assert max(drawn["perTask"]) - min(drawn["perTask"]) < 0.01, drawn  # heights proportional to counts
    assert drawn["scrollWidth"] <= width, drawn  # no sideways scroll
    assert all(right <= width + 0.5 for right in drawn["charts"]), drawn
    assert browser.find_element("id", "tab-charts").get_attribute("class") == "tab on"
    assert "since the dashboard started" in browser.find_element("id", "chart-queues").text


def test_row_click_detail_and_filters_live_in_the_url(system: Scene, browser: Any) -> None:
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + "/")
    failed = system.ids["failed"]
    search = browser.find_element("name", "q")
    search.send_keys(failed[:12])
    browser.find_element("css selector", "#filters button[type=submit]").click()
    _until(browser, lambda: _js(browser, ROW_COUNT) == 1, "the search to leave one row")
    browser.find_element("css selector", "#tasks tbody tr").click()
    _until(
        browser, lambda: failed in browser.find_element("id", "detail-title").text, "the failed task's detail"
    )
    assert f"q={failed[:12]}" in browser.current_url and f"task={failed}" in browser.current_url
    browser.refresh()  # a reload (or the link, shared) shows the same filter and the same task
    _until(
        browser, lambda: failed in browser.find_element("id", "detail-title").text, "the detail after reload"
    )
    assert browser.find_element("name", "q").get_attribute("value") == failed[:12]
    assert _js(browser, ROW_COUNT) == 1
    assert "RuntimeError: this task always fails" in browser.find_element("id", "detail-error").text


def test_columns_sort_on_the_server_and_search_finds_the_oldest_task(system: Scene, browser: Any) -> None:
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + "/")
    header = browser.find_element("css selector", '#tasks th[data-sort="name"]')
    header.click()
    _until(browser, lambda: "sort=name" in browser.current_url, "the sort in the URL")

    def names() -> list[str]:
        return list(
            _js(browser, "return [...document.querySelectorAll('#tasks td.c-name')].map(t => t.textContent)")
        )

    ascending = _until(browser, lambda: (n := names()) and n[0] == "bt.add" and n, "rows ordered by name")
    assert ascending == sorted(ascending)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    descending = _until(browser, lambda: (n := names()) and n[0] == "bt.report" and n, "rows in reverse")
    assert descending == sorted(descending, reverse=True)
    # The oldest record of the store, found by a substring of its id (not only the newest few thousand).
    oldest = system.app.store.list_tasks(_query(order="created", limit=1))[0]
    _open(browser, system.dashboard.url + f"/?q={oldest.id[5:15]}")
    _until(browser, lambda: _js(browser, ROW_COUNT) == 1, "the oldest task alone")
    assert oldest.id.startswith(browser.find_element("css selector", "#tasks td.c-id").text)


def test_retry_from_the_detail_runs_the_task_again(system: Scene, browser: Any) -> None:
    failed = system.ids["failed"]
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + f"/?task={failed}")
    _until(browser, lambda: browser.find_element("id", "retry").is_enabled(), "the Retry button")
    browser.find_element("id", "retry").click()
    _until(browser, lambda: "queued" in browser.find_element("id", "message").text, "the retry message")
    poll_until(
        lambda: (r := system.app.store.get(failed)) is not None and r.attempt > 2 and r.status.terminal,
        60,
        "the retried attempt to end",
    )


def test_cancel_from_the_detail_stops_a_running_task(system: Scene, browser: Any) -> None:
    handle = bt.cooperative.apply_async(args=(60,), app=system.app)
    system.wait_for(handle.id, TaskStatus.RUNNING)
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + f"/?task={handle.id}")
    _until(browser, lambda: browser.find_element("id", "cancel").is_enabled(), "the Cancel button")
    browser.find_element("id", "cancel").click()
    system.wait_for(handle.id, TaskStatus.CANCELLED)
    _until(
        browser, lambda: "CANCELLED" in browser.find_element("id", "detail-fields").text, "the detail update"
    )


def test_markup_and_secrets_stay_text_on_the_page(system: Scene, browser: Any) -> None:
    ids = system.ids
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + f"/?task={ids['marked']}")
    _until(browser, lambda: "received" in browser.find_element("id", "detail-logs").text, "the log lines")
    assert XSS.upper() in browser.find_element("id", "detail-result").text  # shown as text
    assert _js(browser, "return document.scripts.length") == 1  # only dashboard.js: nothing was injected
    _open(browser, system.dashboard.url + f"/?task={ids['leaky']}")
    _until(browser, lambda: "connecting" in browser.find_element("id", "detail-logs").text, "the log lines")
    assert SECRET not in browser.find_element("tag name", "body").text
    browser.find_element("id", "show-args").click()
    _until(browser, lambda: "postgres://" in browser.find_element("id", "detail-args").text, "the arguments")
    assert SECRET not in browser.find_element("tag name", "body").text


def test_new_tasks_appear_without_a_reload(system: Scene, browser: Any) -> None:
    _viewport(browser, 1280, 800)
    _open(browser, system.dashboard.url + "/")
    _until(browser, lambda: browser.find_element("id", "live").text == "live", "the event stream")
    handle = bt.add.apply_async(args=(1000, 1), app=system.app)
    _until(
        browser,
        lambda: _js(browser, f"return !!document.querySelector('tr[data-id=\"{handle.id}\"]')"),
        "the new task's row",
    )


def test_workers_view_tells_a_clean_stop_from_a_lost_worker(
    system: Scene, browser: Any, tmp_path: Path
) -> None:
    store = system.app.store
    lost = "gone-host:4242:abcdef"
    store.heartbeat(lost, time.time() - 3600)  # silent for an hour, never said it stopped
    burst = WorkerProcess(
        system.worker.command[system.worker.command.index("--broker-url") + 1],
        system.worker.command[system.worker.command.index("--store-url") + 1],
        f"empty-{os.getpid()}",
        tmp_path / "burst.log",
        concurrency=1,
        extra_args=("--burst",),
    ).start()
    assert burst.process is not None
    assert burst.process.wait(60) == 0, burst.log_path.read_text()
    _viewport(browser, 1280, 800)
    browser.get(system.dashboard.url + "/?view=workers")

    def states() -> dict[str, str]:
        rows = _js(
            browser,
            "return [...document.querySelectorAll('#workers tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))",
        )
        return {row[0]: row[3] for row in rows}

    seen = _until(browser, lambda: (s := states()) and lost in s and len(s) >= 3 and s, "the worker rows")
    _shot(browser, "workers-1280x800")
    assert seen[lost] == "lost"
    assert sorted(seen.values()).count("stopped") >= 1, seen  # the burst worker said it stopped
    assert list(seen.values()).count("alive") >= 1, seen  # the system's own worker


def _query(**fields: Any) -> Any:
    from decortask.store.base import TaskQuery

    return TaskQuery(**fields)


def test_schedules_view_lists_schedules_and_pauses_one(
    system: Scene, browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules = {
        "hourly-add": {"task": "bt.add", "every": 3600, "args": [1, 2]},
        XSS: {"task": "bt.add", "cron": "0 3 * * *", "tz": "Europe/Paris", "args": [3, 4]},
    }
    monkeypatch.setenv("DECORTASK_SCHEDULES", json.dumps(schedules))
    urls = system.worker.command
    dashboard = DashboardProcess(
        urls[urls.index("--broker-url") + 1],
        urls[urls.index("--store-url") + 1],
        tmp_path / "dashboard.log",
        "-A",
        "tests.behaviour_tasks",
    ).start()
    try:
        _login(browser, dashboard.url)
        browser.get(dashboard.url + "/?view=schedules")

        def rows() -> list[list[str]]:
            return list(
                _js(
                    browser,
                    "return [...document.querySelectorAll('#schedules tbody tr')]"
                    ".map((r) => [...r.cells].map((c) => c.textContent))",
                )
            )

        found = _until(browser, lambda: len(r := rows()) == 2 and r, "the schedule rows")
        _shot(browser, "schedules-1280x800")
        by_name = {row[0]: row for row in found}
        assert by_name[XSS + "bt.add"][1] == "cron 0 3 * * *Europe/Paris"  # the markup shown as text
        assert by_name["hourly-addbt.add"][1] == "every 1h" and by_name["hourly-addbt.add"][6] == "Pause"
        assert _js(browser, "return document.scripts.length") == 1
        pause = browser.find_elements("xpath", "//table[@id='schedules']//button[text()='Pause']")[0]
        pause.click()
        _until(browser, lambda: "paused" in browser.find_element("id", "message").text, "the pause message")
        _until(browser, lambda: any(row[4] == "paused" for row in rows()), "a paused row")
    finally:
        dashboard.stop()
        _login(browser, system.dashboard.url)


def test_a_graph_nodes_page_draws_the_graph_coloured_by_state(system: Scene, browser: Any) -> None:
    """The task page of a graph node shows the graph: a box per node in the colour of its state (done,
    failed, skipped, running, not created yet), arrows between them, the key, and the members' table."""
    from decortask import Graph, GraphStatus

    g = Graph()
    g.add("a", bt.add.s(1, 2))
    g.add("b", bt.add.s(3, 4))
    g.add("total", bt.add.s(), requires=["a", "b"])  # add(a=3, b=7)
    g.add("broken", bt.always_fails.si(), requires=["a"])
    g.add("skipped", bt.add.si(1, 1), requires=["broken"])
    g.add("slow", bt.cooperative.si(60), requires=["total"])
    g.add("after_slow", bt.add.si(2, 2), requires=["slow"], optional=["skipped"])
    g.add_finally("report", bt.add.si(0, 0))
    handle = g.apply_async(app=system.app)
    expected = {
        "a": "SUCCESS",
        "b": "SUCCESS",
        "total": "SUCCESS",
        "broken": "FAILED",
        "skipped": "CANCELLED",
        "slow": "RUNNING",
        "after_slow": "WAITING",
        "report": "WAITING",
    }
    states = {name: (s.value if s else "WAITING") for name, s in handle.states().items()}
    poll_until(
        lambda: {name: (s.value if s else "WAITING") for name, s in handle.states().items()} == expected,
        30,
        f"the graph to reach the pictured states (now {states})",
    )
    try:
        _viewport(browser, 1280, 800)
        browser.get(system.dashboard.url + f"/tasks/{handle.node_ids['total']}#workflow")
        drawn = _until(
            browser,
            lambda: _js(
                browser,
                "const n = document.querySelectorAll('svg.workflow-graph .wf-node');"
                "return n.length ? Object.fromEntries([...n].map((e) => [e.dataset.node, e.dataset.status])) : null",
            ),
            "the graph picture",
        )
        _shot(browser, "workflow-graph-1280")
        assert drawn == expected
        fills = _js(
            browser,
            "return Object.fromEntries([...document.querySelectorAll('.wf-node')].map("
            "(e) => [e.dataset.node, getComputedStyle(e.querySelector('rect')).fill]))",
        )
        assert fills["a"] == fills["total"] != fills["broken"] != fills["skipped"] != fills["slow"]
        assert (
            len(_js(browser, "return document.querySelectorAll('svg.workflow-graph .wf-edge')"))
            == 2 + 1 + 1 + 1 + 2 + 1
        )
        box = _js(
            browser, "return document.querySelector('svg.workflow-graph').getBoundingClientRect().toJSON()"
        )
        assert box["width"] > 600 and box["height"] > 100  # drawn at its size, not squeezed
        _viewport(browser, 900, 800)  # narrower than the picture: it scrolls in its box, the page does not
        assert _js(browser, "return document.documentElement.scrollWidth <= window.innerWidth")
        picture = "const p = document.querySelector('.wf-picture'); return p.scrollWidth > p.clientWidth"
        assert _until(browser, lambda: _js(browser, picture), "the picture to scroll in its box")
        _shot(browser, "workflow-graph-900")
        _viewport(browser, 1280, 800)
        # The list's detail panel of a member links to that picture.
        _open(browser, system.dashboard.url + f"/?task={handle.node_ids['broken']}")
        link = _until(
            browser,
            lambda: _js(browser, "const a = document.querySelector('#detail-fields a'); return a && a.href"),
            "the detail's workflow link",
        )
        assert link.endswith(f"/tasks/{handle.node_ids['broken']}#workflow")
    finally:
        handle.cancel()
        assert handle.wait(timeout=30) is GraphStatus.FAILED  # broken failed; the rest cancelled or done
