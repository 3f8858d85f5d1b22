"""The quality page in a real browser: headless Debian chromium, driven by Playwright,
against `steelsight serve` on a copy of the main job's home, with every request that
leaves the server blocked (plants are air-gapped). A screenshot of each view is saved in
.test-artifacts/quality-page/."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import pytest

from tests.helpers import MainJob, Server, start_server, stop_server
from warehouse.store import Warehouse

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".test-artifacts" / "quality-page"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
KEY = "quality-engineer-" + "q" * 24
# as the machine's notes say: without these, chromium keeps calling Google's hosts
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(main_job: MainJob, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("page")
    home = root / "home"
    shutil.copytree(main_job.home, home)  # the recordings too: the page shows their frames
    env = {"STEELSIGHT_API_KEYS": json.dumps({"quality": KEY})}
    server = start_server(home, root / "serve.log", env, [], key=KEY)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(
            f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(site: Server, browser):
    """A fresh browser session that can reach nothing but the server; what it tried to
    reach elsewhere is in page.blocked."""
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    blocked: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(site.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    opened = context.new_page()
    opened.blocked = blocked
    yield opened
    context.close()


def _log_in(page, site: Server, path: str = "/ui/sheets") -> None:
    page.goto(site.url + path)
    page.fill("input[name=key]", KEY)
    page.click("#login button[type=submit]")
    page.wait_for_load_state("load")


def _all_images_loaded(page) -> list[int]:
    """Every image on the page loaded eagerly; their natural widths."""
    page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")


def _line(site: Server) -> dict:
    warehouse = Warehouse(site.home / "warehouse")
    (archive,) = warehouse.query(
        "SELECT archive_id, path FROM archives WHERE parse_filename(path) = 'line-1-inspection-s2'"
    ).to_pylist()
    sheets = warehouse.query(
        "SELECT sheet_index, n_defects FROM sheets WHERE archive_id = ? ORDER BY sheet_index",
        [archive["archive_id"]],
    ).to_pylist()
    return {**archive, "sheets": sheets}


def test_a_key_logs_in_and_the_sheets_open_as_maps_with_their_frames(page, site: Server) -> None:
    page.goto(site.url + "/ui/sheets/x/0/map.png")
    assert page.url.startswith(site.url + "/ui/login?next=")  # nothing without a session
    page.fill("input[name=key]", "not-the-key-at-all")
    page.click("#login button[type=submit]")
    assert "not one configured" in page.inner_text("[role=alert]")

    _log_in(page, site)
    line = _line(site)
    assert page.url == site.url + "/ui/sheets"
    rows = page.locator("#sheets tbody tr")
    total = Warehouse(site.home / "warehouse").query("SELECT count(*) AS n FROM sheets")
    assert rows.count() == total.to_pylist()[0]["n"] >= len(line["sheets"])
    page.screenshot(path=SHOTS / "sheets.png", full_page=True)

    page.select_option("select[name=identity]", "identified")
    page.click("#filters button[type=submit]")
    assert "identity=identified" in page.url
    assert page.locator("#sheets tbody tr").count() == 0  # the test's detector names none

    worst = max(line["sheets"], key=lambda s: s["n_defects"])
    page.goto(f"{site.url}/ui/sheets/{line['archive_id']}/{worst['sheet_index']}")
    assert page.inner_text("#defect-count") == str(worst["n_defects"])
    assert page.locator("#defects tbody tr").count() == worst["n_defects"] > 0
    widths = _all_images_loaded(page)
    assert page.evaluate("document.getElementById('sheet-map').naturalWidth") == 1600
    frames = page.locator("img.frame")
    assert frames.count() >= 5 and all(w > 0 for w in widths)
    assert page.evaluate("document.querySelector('img.frame').naturalWidth") == 1600
    page.screenshot(path=SHOTS / "sheet-map.png", full_page=True)
    assert page.blocked == []


def test_an_uploaded_frame_shows_its_defects_and_class_probabilities(
    page, site: Server, tmp_path: Path
) -> None:
    line = _line(site)
    warehouse = Warehouse(site.home / "warehouse")
    (busiest,) = warehouse.query(
        "SELECT frame_id FROM frames WHERE archive_id = ? ORDER BY n_defects DESC, frame_id "
        "LIMIT 1",
        [line["archive_id"]],
    ).to_pylist()
    archive = Path(line["path"])
    with (archive / "frame_index.csv").open(newline="") as f:
        position = [r["frame_id"] for r in csv.DictReader(f)].index(busiest["frame_id"])
    capture = cv2.VideoCapture(str(archive / "video.mkv"))
    capture.set(cv2.CAP_PROP_POS_FRAMES, position)
    ok, frame = capture.read()
    capture.release()
    assert ok
    upload = tmp_path / "frame.png"
    cv2.imwrite(str(upload), frame[:, :, 0])
    with site.client() as http:  # what the API answers for the same frame
        api = http.post(
            "/v1/inspect", content=upload.read_bytes(), headers={"content-type": "image/png"}
        )
    assert api.status_code == 200

    _log_in(page, site, "/ui/inspect")
    page.set_input_files("input[name=frame]", str(upload))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#overlay")
    assert page.inner_text("#answer-defects") == str(len(api.json()["defects"]))
    gate = page.locator("#gate tbody tr")
    assert gate.count() == len(api.json()["gate"]) == 4
    shown = {
        gate.nth(i).locator("td").nth(0).inner_text(): float(
            gate.nth(i).locator("td").nth(1).inner_text()
        )
        for i in range(gate.count())
    }
    assert shown == pytest.approx({k: round(v, 3) for k, v in api.json()["gate"].items()}, abs=1e-3)
    assert _all_images_loaded(page) == [1600]
    page.screenshot(path=SHOTS / "inspect.png", full_page=True)

    page.set_input_files(
        "input[name=frame]", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}
    )
    page.click("#upload button[type=submit]")
    assert "text/plain" in page.inner_text("[role=alert]")  # refused, saying why
    assert page.blocked == []


def test_models_and_drift_views(page, site: Server) -> None:
    _log_in(page, site, "/ui/models")
    kinds = page.locator("h2.model").all_inner_texts()
    assert sorted(k.split()[0] for k in kinds) == ["imprint", "marking", "segmentation"]
    assert "scratches" in page.inner_text("main")  # the segmenter's per-class table
    page.screenshot(path=SHOTS / "models.png", full_page=True)

    page.goto(site.url + "/ui/drift")
    rows = page.locator("#drift tbody tr")
    assert rows.count() >= 1
    assert "line-1-inspection-s2" in page.inner_text("#drift")
    # level, gate and defect share per class, unknown share, identified similarity
    assert page.locator("#measures tbody tr").count() == 1 + 4 * 2 + 2
    page.screenshot(path=SHOTS / "drift.png", full_page=True)
    assert page.blocked == []
    with site.client(key=None) as http:  # the newest recording's drift, for the scraper
        metrics = http.get("/metrics").text
    assert 'steelsight_drift{measure="gate_psi",subject="scratches"}' in metrics
    assert "steelsight_drift_flagged{archive_id=" in metrics


def test_api_docs_load_offline_and_authorize_with_the_key(page, site: Server) -> None:
    page.goto(site.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    page.click("button.authorize")
    dialog = page.locator(".dialog-ux")
    assert "ApiKey" in dialog.inner_text() and "X-API-Key" in dialog.inner_text()
    dialog.locator("input").fill(KEY)
    dialog.locator("button.authorize").click()
    dialog.locator("button.btn-done").click()
    models = page.locator("#operations-models-served_models_v1_models_get")
    models.locator(".opblock-summary").click()
    models.locator("button.try-out__btn").click()
    models.locator("button.execute").click()
    page.wait_for_selector("#operations-models-served_models_v1_models_get .live-responses-table")
    status = models.locator(".live-responses-table tbody .response-col_status").first
    assert status.inner_text().strip() == "200"  # the key went with the request
    page.screenshot(path=SHOTS / "api-docs.png", full_page=False)
    assert page.blocked == []
