"""The serving API over real HTTP: `steelsight serve` started by the test on a copy of
the main job's home (its champions in a SQLite MLflow store, its DuckDB/Parquet
warehouse), called with httpx on loopback.

One server runs with API keys and a small queue for the functional tests; a second runs
without keys (as the demo does), as two processes with tiny queues, to be flooded."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.labels import SEVERSTAL_CLASSES
from core.rle import rle_decode
from tasks.inspection_report import compare_defects
from tests.helpers import LINE_SHEETS, MainJob, Server, free_port, start_server, stop_server
from warehouse.schema import TABLES
from warehouse.store import Warehouse, new_import_id

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BIN = Path(sys.executable).parent
KEY = "mes-line-1-" + "k" * 24
OTHER_KEY = "mes-line-1-" + "x" * 24
NAMED_SHEET = "S-TEST-0002"  # the ID the test gives the line's sheet 2
FIELD_ONLY = b'--b\r\nContent-Disposition: form-data; name="frame"\r\n\r\nabc\r\n--b--\r\n'


def _home_copy(main_job: MainJob, dest: Path) -> Path:
    """The main job's warehouse and registry, copied so the tests may change them (the
    copied registry still points at the original model files, which nobody changes)."""
    shutil.copytree(main_job.home / "warehouse", dest / "warehouse")
    (dest / "mlflow").mkdir(parents=True)
    # SQLite's backup, not a file copy: recent writes may still sit in the -wal file
    with (
        sqlite3.connect(main_job.home / "mlflow" / "mlflow.db") as source,
        sqlite3.connect(dest / "mlflow" / "mlflow.db") as copy,
    ):
        source.backup(copy)
    return dest


def _name_sheet(home: Path, archive_id: str, sheet_index: int, sheet_id: str) -> None:
    """Re-import the line's rows with one sheet identified, as the identity models
    would have named it (the demo-size detector finds no marking)."""
    warehouse = Warehouse(home / "warehouse")
    import_id = new_import_id()
    tables = {}
    for name in TABLES:
        rows = warehouse.query(f"SELECT * FROM {name} WHERE archive_id = ?", [archive_id])
        rows = rows.set_column(
            rows.schema.get_field_index("import_id"),
            "import_id",
            pa.array([import_id] * rows.num_rows, pa.string()),
        )
        tables[name] = rows
    for name in ("sheets", "defects"):
        table = tables[name].to_pylist()
        for row in table:
            if row["sheet_index"] == sheet_index:
                row["sheet_id"] = sheet_id
        tables[name] = pa.Table.from_pylist(table, schema=tables[name].schema)
    (archive_row,) = tables.pop("archives").to_pylist()
    warehouse.import_archive({**archive_row, "import_id": import_id}, tables)


@pytest.fixture(scope="module")
def line(main_job: MainJob) -> dict:
    """The line recording's frames (as the camera gave them) and the twin's truth."""
    archive = main_job.home / "archives" / "line-1-inspection-s2"
    with (archive / "frame_index.csv").open(newline="") as f:
        ids = [r["frame_id"] for r in csv.DictReader(f)]
    capture = cv2.VideoCapture(str(archive / "video.mkv"))
    frames = []
    for _ in ids:
        ok, frame = capture.read()
        assert ok
        frames.append(frame[:, :, 0])
    capture.release()
    with (archive / "ground_truth" / "defects.csv").open(newline="") as f:
        truth = list(csv.DictReader(f))
    archive_id = (
        Warehouse(main_job.home / "warehouse")
        .query("SELECT archive_id FROM archives WHERE path LIKE ?", ["%/line-1-inspection-s2"])
        .to_pylist()[0]["archive_id"]
    )
    return {"ids": ids, "frames": frames, "truth": truth, "archive_id": archive_id}


@pytest.fixture(scope="module")
def server(main_job: MainJob, line: dict, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    home = _home_copy(main_job, root / "home")
    _name_sheet(home, line["archive_id"], 2, NAMED_SHEET)
    env = {
        "STEELSIGHT_API_KEYS": json.dumps({"mes": KEY, "historian": OTHER_KEY}),
        "STEELSIGHT_SERVE_QUEUE_FRAMES": "8",
        "STEELSIGHT_SERVE_BATCH_FRAMES": "4",
        "STEELSIGHT_MAX_IMAGE_BYTES": str(1024 * 1024),
        "STEELSIGHT_MAX_IMAGE_PIXELS": str(1600 * 256 * 2),
        "STEELSIGHT_MAX_BATCH_FRAMES": "4",
        "STEELSIGHT_SERVE_HEAD_TIMEOUT_S": "3",
        "STEELSIGHT_SERVE_BODY_TIMEOUT_S": "4",
        "STEELSIGHT_SERVE_MAX_HEAD_BYTES": "8192",
    }
    started = start_server(home, root / "serve.log", env, [], key=KEY)
    yield started
    stop_server(started)


def _png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()


def _jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _inspect(http: httpx.Client, frame: np.ndarray, **params) -> httpx.Response:
    return http.post(
        "/v1/inspect", content=_jpeg(frame), headers={"Content-Type": "image/jpeg"}, params=params
    )


def _metrics(http: httpx.Client) -> str:
    response = http.get("/metrics")
    assert response.status_code == 200
    return response.text


def _access_lines(log: Path) -> list[str]:
    """The server log's JSON access-log lines."""
    return [x for x in log.read_text().splitlines() if x.startswith("{")]


def test_operations_endpoints_and_docs(server: Server) -> None:
    with server.client(key=None) as http:
        assert http.get("/healthz").json() == {"status": "alive"}
        ready = http.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["models"] == "ok"
        assert ready["checks"]["warehouse"].startswith("ok")
        metrics = _metrics(http)
        assert 'steelsight_model_info{kind="segmentation",version="1"} 1.0' in metrics
        assert "steelsight_request_seconds_bucket" in metrics
        assert "_created" not in metrics  # one series per counter, as the conventions say
        docs = http.get("/docs")
        assert docs.status_code == 200 and "/docs/files/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text and http.get("/docs/files/swagger-ui-bundle.js").is_success
        spec = http.get("/openapi.json").json()
        body = spec["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
        assert {"image/jpeg", "image/png", "multipart/form-data"} <= set(body)
    # the key is a security scheme on every operation that checks it, and only those
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    keyed = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"ApiKey": []}]
    }
    assert keyed == {
        ("/v1/inspect", "post"),
        ("/v1/inspect/batch", "post"),
        ("/v1/sheets", "get"),
        ("/v1/sheets/{sheet_id}", "get"),
        ("/v1/models", "get"),
    }
    # every refusal documented in the shape the API sends, none in FastAPI's own
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method in keyed:
        responses = spec["paths"][path][method]["responses"]
        assert ("401" in responses and "422" in responses) or path == "/v1/models"
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                content = response["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                for example in content["examples"].values():
                    assert example["value"]["error"]["status"] == int(status)
    with server.client(key=None) as http:
        refused = http.get("/v1/models")
    documented = spec["paths"]["/v1/models"]["get"]["responses"]["401"]["content"][
        "application/json"
    ]
    assert set(refused.json()["error"]) == set(
        documented["examples"]["unauthorized"]["value"]["error"]
    )
    with server.client() as http:
        models = http.get("/v1/models").json()
    assert {m["kind"]: m["version"] for m in models["served"]} == {
        "segmentation": "1",
        "marking": "1",
        "imprint": "1",
    }
    assert models["problem"] is None


def test_requests_need_a_valid_key(server: Server, line: dict) -> None:
    frame = _jpeg(line["frames"][0])
    for key in (None, OTHER_KEY[:-1] + "y", "short"):
        with server.client(key=key) as http:
            for response in (
                http.get("/v1/models"),
                http.get("/v1/sheets"),
                http.post("/v1/inspect", content=frame, headers={"Content-Type": "image/jpeg"}),
            ):
                assert response.status_code == 401, response.text
                error = response.json()["error"]
                assert error["code"] == "unauthorized" and "X-API-Key" in error["message"]
    with server.client(key=OTHER_KEY) as http:
        assert http.get("/v1/models").status_code == 200
    access = [json.loads(x) for x in _access_lines(server.log)]
    assert {"mes", "historian"} <= {a["client"] for a in access}
    assert not any(KEY in line or OTHER_KEY in line for line in server.log.read_text().splitlines())


def test_no_keys_is_refused_unless_allowed(tmp_path: Path) -> None:
    env = {**os.environ, "STEELSIGHT_HOME": str(tmp_path / "home")}
    for name in ("STEELSIGHT_API_KEYS", "STEELSIGHT_ALLOW_NO_KEYS"):
        env.pop(name, None)
    refused = subprocess.run(
        [str(BIN / "steelsight"), "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "no API keys configured" in refused.stdout + refused.stderr


def test_bad_input_gets_a_4xx_naming_the_problem_and_the_next_request_is_served(
    server: Server, line: dict
) -> None:
    frame = line["frames"][10]
    jpeg = _jpeg(frame)
    big = _png(np.zeros((1024, 1600), np.uint8))
    noise = np.random.default_rng(1).integers(0, 255, 1_200_000, dtype=np.uint8).tobytes()

    def raw(data: bytes, media: str) -> dict:
        return {"content": data, "headers": {"Content-Type": media}}

    def part(name: str, data: bytes, media: str) -> dict:
        return {"files": {"frame": (name, data, media)}}

    cases = [
        ("empty body", raw(b"", "image/jpeg"), 400, "empty_body"),
        ("text", raw(b"frame 7", "image/png"), 422, "not_an_image"),
        ("truncated jpeg", raw(jpeg[: len(jpeg) // 2], "image/jpeg"), 422, "truncated_image"),
        ("too many pixels", raw(big, "image/png"), 413, "image_too_large"),
        ("too many bytes", raw(b"\xff\xd8\xff" + noise, "image/jpeg"), 413, "body_too_large"),
        ("wrong type", raw(jpeg, "text/plain"), 415, "unsupported_media_type"),
        ("no type", raw(jpeg, ""), 415, "unsupported_media_type"),
        ("form without file", raw(FIELD_ONLY, "multipart/form-data; boundary=b"), 400, "no_frame"),
        (
            "part of the wrong type",
            part("f.txt", b"abc", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        ("truncated part", part("f.jpg", jpeg[:3000], "image/jpeg"), 422, "truncated_image"),
    ]
    with server.client() as http:
        for what, request, status, code in cases:
            response = http.post("/v1/inspect", **request)
            assert response.status_code == status, (what, response.text)
            error = response.json()["error"]
            assert error["code"] == code, (what, error)
            assert error["message"], what
            after = _inspect(http, frame)
            assert after.status_code == 200, (what, after.text)
        five = [("frames", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(5)]
        others = [
            (http.post("/v1/inspect/batch", **raw(jpeg, "image/jpeg")), 415),
            (http.post("/v1/inspect/batch", files=five), 413),
            (http.get("/v1/sheets", params={"since": "yesterday"}), 422),
            (http.get("/v1/sheets", params={"limit": 0}), 422),
            (http.get("/v1/sheets", params={"since": "2026-01-02", "until": "2026-01-01"}), 422),
            (http.get("/v1/sheets/S-NEVER-SEEN"), 404),
            (http.get("/v1/sheets/unknown"), 404),
            (http.get("/v1/nothing-here"), 404),
        ]
        for response, status in others:
            assert response.status_code == status, response.text
            assert response.json()["error"]["message"]
        assert others[1][0].json()["error"]["code"] == "too_many_frames"
        assert _inspect(http, frame).status_code == 200
        assert 'status="500"' not in _metrics(http)
    assert "Traceback" not in server.log.read_text()


def test_twin_frames_give_the_defects_the_twin_drew_and_the_inspect_job_found(
    server: Server, line: dict, main_job: MainJob
) -> None:
    shape = line["frames"][0].shape
    served = []
    gates, markings = {}, {}

    def counted(http: httpx.Client) -> tuple[float, float, float]:
        metrics = _metrics(http)
        return (
            sum(v for _, v in _samples(metrics, "steelsight_frames_inspected_total")),
            sum(v for _, v in _samples(metrics, "steelsight_defects_total")),
            sum(v for _, v in _samples(metrics, "steelsight_identities_total")),
        )

    with server.client() as http:
        before = counted(http)
        for start in range(0, len(line["ids"]), 4):
            ids = line["ids"][start : start + 4]
            files = [
                ("frames", (f"{i}.png", _png(line["frames"][start + n]), "image/png"))
                for n, i in enumerate(ids)
            ]
            response = http.post("/v1/inspect/batch", files=files)
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["name"] for r in results] == [f"frames ({i}.png)" for i in ids]
            for frame_id, item in zip(ids, results, strict=True):
                result = item["result"]
                assert item["error"] is None and result["models"]["segmentation"] == "1"
                assert (result["width"], result["height"]) == (shape[1], shape[0])
                assert result["identity"]["status"] in {"identified", "unknown", "no_marking"}
                gates[frame_id] = result["gate"]
                markings[frame_id] = len(result["markings"])
                served += [{**d, "frame_id": frame_id} for d in result["defects"]]
        after = counted(http)
    # the domain counters say what was answered: frames, defects, one identity per frame
    n = len(line["ids"])
    assert [a - b for a, b in zip(after, before, strict=True)] == [n, len(served), n]
    classes = dict(SEVERSTAL_CLASSES)
    report = compare_defects(line["truth"], served, classes, shape)
    scratches = report["scratches"]
    # the same bar as the inspect job's test: a two-minute model finds about a third
    assert scratches["true"] > 0
    assert scratches["recall"] >= 0.2 and scratches["precision"] >= 0.2, report
    # The API and the inspect job give the same answers with the same model version.
    warehouse = Warehouse(main_job.home / "warehouse")
    stored = warehouse.query(
        "SELECT frame_id, class_id, rle FROM defects WHERE archive_id = ?", [line["archive_id"]]
    ).to_pylist()
    differ = union = 0
    for frame_id in line["ids"]:
        for class_id in classes:
            a = np.zeros(shape, bool)
            b = np.zeros(shape, bool)
            for d in served:
                if d["frame_id"] == frame_id and d["class_id"] == class_id:
                    a |= rle_decode(d["rle"], shape).astype(bool)
            for d in stored:
                if d["frame_id"] == frame_id and d["class_id"] == class_id:
                    b |= rle_decode(d["rle"], shape).astype(bool)
            differ += int((a ^ b).sum())
            union += int((a | b).sum())
    assert union > 0 and differ / union < 0.01, (differ, union)
    stored_frames = warehouse.query(
        "SELECT frame_id, gate, n_markings FROM frames WHERE archive_id = ?", [line["archive_id"]]
    ).to_pylist()
    for row in stored_frames:
        assert np.allclose(list(gates[row["frame_id"]].values()), row["gate"], atol=1e-3)
    # markings: both go through models.identity.pipeline (the demo's detector finds few)
    assert {r["frame_id"]: r["n_markings"] for r in stored_frames} == markings


def test_a_frame_sent_with_its_neighbours_is_identified_as_the_inspect_job_did(
    server: Server, line: dict, main_job: MainJob
) -> None:
    """/v1/inspect with the frames before and after it (`previous`, `next`) sees each
    marking as the inspect job saw it: the same markings kept per frame, and every
    sheet's verified similarity as the job stored it comes back for one of its markings."""
    frames, ids = line["frames"], line["ids"]
    warehouse = Warehouse(main_job.home / "warehouse")
    stored = {
        r["frame_id"]: r["n_markings"]
        for r in warehouse.query(
            "SELECT frame_id, n_markings FROM frames WHERE archive_id = ?", [line["archive_id"]]
        ).to_pylist()
    }
    sheets = warehouse.query(
        "SELECT similarity FROM sheets WHERE archive_id = ? AND similarity IS NOT NULL",
        [line["archive_id"]],
    ).to_pylist()
    markings, similarities = {}, []
    with server.client() as http:
        for k, frame_id in enumerate(ids):
            files = {"frame": ("f.png", _png(frames[k]), "image/png")}
            if k:
                files["previous"] = ("p.png", _png(frames[k - 1]), "image/png")
            if k + 1 < len(frames):
                files["next"] = ("n.png", _png(frames[k + 1]), "image/png")
            response = http.post("/v1/inspect", files=files)
            assert response.status_code == 200, response.text
            found = response.json()["markings"]
            markings[frame_id] = len(found)
            similarities += [m["similarity"] for m in found if m["similarity"] is not None]
        # the neighbours must be frames of the same size, sent once each, under these names
        jpeg = _jpeg(frames[1])
        small = _jpeg(frames[0][:, :800])
        cases = [
            ({"frame": jpeg, "previous": small}, 400, "neighbour_shape"),
            ({"frame": jpeg, "beside": jpeg}, 400, "invalid_multipart"),
            ({"previous": jpeg, "next": jpeg}, 400, "invalid_multipart"),
        ]
        for parts, status, code in cases:
            files = [(name, (f"{name}.jpg", data, "image/jpeg")) for name, data in parts.items()]
            response = http.post("/v1/inspect", files=files)
            assert response.status_code == status, (parts.keys(), response.text)
            assert response.json()["error"]["code"] == code, response.text
        four = [
            (name, ("f.jpg", jpeg, "image/jpeg")) for name in ("frame", "previous", "next", "x")
        ]
        response = http.post("/v1/inspect", files=four)
        assert response.status_code == 413 and "/v1/inspect/batch" in response.text
    assert markings == stored
    for sheet in sheets:
        assert any(abs(sheet["similarity"] - s) < 1e-4 for s in similarities), (sheet, similarities)


def test_overlay_draws_the_masks(server: Server, line: dict) -> None:
    frame_id = next(r["ImageId"] for r in line["truth"] if r["ClassId"] == "3")
    frame = line["frames"][line["ids"].index(frame_id)]
    with server.client() as http:
        multipart = http.post(
            "/v1/inspect",
            files={"frame": ("f.png", _png(frame), "image/png")},
            params={"overlay": "true"},
        )
        plain = http.post("/v1/inspect", content=_png(frame), headers={"Content-Type": "image/png"})
    assert multipart.status_code == 200 and plain.status_code == 200
    answer = multipart.json()
    assert plain.json()["overlay_png"] is None
    assert plain.json()["defects"] == answer["defects"]  # raw body and multipart agree
    assert answer["defects"], "a frame with a drawn scratch should show one"
    png = base64.b64decode(answer["overlay_png"])
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (*frame.shape, 3)
    mask = rle_decode(answer["defects"][0]["rle"], frame.shape).astype(bool)
    tinted = np.abs(picture[:, :, 0].astype(int) - picture[:, :, 2].astype(int)) > 10
    assert tinted[mask].mean() > 0.9 and tinted[~mask].mean() < 0.05


def test_sheets_come_from_the_warehouse(server: Server, line: dict) -> None:
    warehouse = Warehouse(server.home / "warehouse")
    with server.client() as http:
        listed = http.get("/v1/sheets").json()["sheets"]
        # the line's sheets, and those of any line the inspect tests added
        assert len(listed) == warehouse.row_counts()["sheets"]
        assert sum(s["archive_id"] == line["archive_id"] for s in listed) == LINE_SHEETS
        seen = [datetime.fromisoformat(s["seen_at"]) for s in listed]
        assert seen == sorted(seen, reverse=True)
        since = listed[2]["seen_at"]
        recent = http.get("/v1/sheets", params={"since": since}).json()["sheets"]
        cut = datetime.fromisoformat(since)
        expected = [s for s, at in zip(listed, seen, strict=True) if at >= cut]
        assert len(expected) >= 3
        assert [(s["archive_id"], s["sheet_index"]) for s in recent] == [
            (s["archive_id"], s["sheet_index"]) for s in expected
        ]
        grade = listed[0]["grade"]
        graded = http.get("/v1/sheets", params={"grade": grade}).json()["sheets"]
        assert graded and {s["grade"] for s in graded} == {grade}
        assert len(graded) == sum(s["grade"] == grade for s in listed)
        assert http.get("/v1/sheets", params={"grade": "Z"}).json()["sheets"] == []
        page = http.get("/v1/sheets", params={"limit": 2, "offset": 2}).json()["sheets"]
        assert page == listed[2:4]
        # by identity and line: the named sheet is the only identified one, on line-1
        named = http.get("/v1/sheets", params={"identified": "true"}).json()["sheets"]
        assert [(s["sheet_id"], s["line_id"], s["camera_id"]) for s in named] == [
            (NAMED_SHEET, "line-1", "line-1-inspection")
        ]
        unknown = http.get("/v1/sheets", params={"identified": "false"}).json()["sheets"]
        assert len(unknown) == len(listed) - 1
        on_line = http.get("/v1/sheets", params={"line": "line-1"}).json()["sheets"]
        assert on_line == [s for s in listed if s["line_id"] == "line-1"] and on_line
        assert http.get("/v1/sheets", params={"line": "line-9"}).json()["sheets"] == []
        sheet = http.get(f"/v1/sheets/{NAMED_SHEET}").json()
    assert sheet["sheet_id"] == NAMED_SHEET and sheet["sheet_index"] == 2 and sheet["passes"] == 1
    stored = warehouse.query(
        "SELECT grade, n_defects FROM sheets WHERE archive_id = ? AND sheet_index = 2",
        [line["archive_id"]],
    ).to_pylist()[0]
    assert sheet["grade"] == stored["grade"]
    assert len(sheet["defects"]) == stored["n_defects"] == sum(sheet["defect_counts"].values())
    rles = warehouse.query(
        "SELECT rle FROM defects WHERE archive_id = ? AND sheet_index = 2", [line["archive_id"]]
    )["rle"].to_pylist()
    assert sorted(d["rle"] for d in sheet["defects"]) == sorted(rles)


def _register_copy(home: Path, kind: str) -> int:
    """A new registered version of ``kind`` with the champion's files, promoted."""
    from core.settings import Settings
    from models import registry

    # registry.connect also sets MLflow's global tracking URI: MLflow's SQL registry looks up
    # a "models:/m-..." source through that global, not through this client's store, so a
    # global left on another test's home fails with "Logged model ... not found".
    client = registry.connect(Settings(home=home))
    name = registry.model_name(kind)
    current = client.get_model_version_by_alias(name, registry.CHAMPION)
    created = client.create_model_version(name, current.source, run_id=current.run_id)
    registry.promote(client, kind, int(created.version), "test: hot switch under load")
    return int(created.version)


def test_a_promotion_during_a_stream_of_requests_fails_none(server: Server, line: dict) -> None:
    frames = [_jpeg(f) for f in line["frames"][:8]]
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def stream() -> None:
        with server.client() as http:
            n = 0
            while not stop.is_set():
                response = http.post(
                    "/v1/inspect",
                    content=frames[n % len(frames)],
                    headers={"Content-Type": "image/jpeg"},
                )
                version = response.json().get("models", {}).get("segmentation")
                answers.append((response.status_code, version))
                n += 1

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for s in streams:
        s.start()
    try:
        time.sleep(3)
        new = _register_copy(server.home, "segmentation")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if sum(v == str(new) for _, v in answers[-3:]) == 3:
                break
            time.sleep(0.5)
        time.sleep(2)
    finally:
        stop.set()
        for s in streams:
            s.join(timeout=120)
    assert answers and all(status == 200 for status, _ in answers), answers
    versions = [v for _, v in answers]
    assert versions[0] == "1" and versions[-1] == str(new)
    assert versions.count("1") >= 3 and versions.count(str(new)) >= 3
    with server.client() as http:
        served = {m["kind"]: m["version"] for m in http.get("/v1/models").json()["served"]}
        metrics = _metrics(http)
    assert served["segmentation"] == str(new)
    assert f'steelsight_model_info{{kind="segmentation",version="{new}"}} 1.0' in metrics
    assert 'steelsight_model_info{kind="segmentation",version="1"} 0.0' in metrics


def _samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of ``name`` in a Prometheus text exposition."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    ]


def _worker_pids(metrics: str) -> set[str]:
    """The server processes that have loaded the segmentation champion (multi-process mode
    labels each live process's model_info with its pid)."""
    return {
        labels["pid"]
        for labels, value in _samples(metrics, "steelsight_model_info")
        if labels["kind"] == "segmentation" and value == 1.0
    }


def test_a_flood_beyond_the_queue_gets_503_then_service_resumes(
    main_job: MainJob, line: dict, tmp_path: Path
) -> None:
    """Two server processes (--workers 2), each with a 3-frame queue, flooded; /metrics adds
    the processes' counters up."""
    home = _home_copy(main_job, tmp_path / "home")
    env = {"STEELSIGHT_SERVE_QUEUE_FRAMES": "3", "STEELSIGHT_SERVE_BATCH_FRAMES": "2"}
    env_clear = {"STEELSIGHT_API_KEYS": "{}"}
    flood = start_server(
        home, tmp_path / "serve.log", {**env, **env_clear}, ["--allow-no-keys", "--workers", "2"]
    )
    try:
        assert "SERVING WITHOUT API KEYS" in flood.log.read_text()
        with flood.client(key=None) as http:  # ready means one process is; wait for both
            deadline = time.monotonic() + 240
            while len(_worker_pids(_metrics(http))) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(_worker_pids(_metrics(http))) == 2, _metrics(http)
        jpeg = _jpeg(line["frames"][20])

        def call(_: int) -> httpx.Response:
            with flood.client(key=None) as http:
                return http.post(
                    "/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg"}
                )

        with ThreadPoolExecutor(max_workers=32) as pool:
            responses = list(pool.map(call, range(64)))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503}, codes
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["code"] == "overloaded"
        with flood.client(key=None) as http:
            assert [_inspect(http, line["frames"][20]).status_code for _ in range(3)] == [200] * 3
            metrics = _metrics(http)
        # Both processes answered, and /metrics sums their counters: each answer counted once.
        answered = [
            entry
            for entry in map(json.loads, _access_lines(flood.log))
            if entry["route"] == "/v1/inspect"
        ]
        assert len({entry["pid"] for entry in answered}) == 2
        assert len(answered) == len(codes) + 3
        assert _samples(metrics, "steelsight_rejected_frames_total") == [
            ({}, float(codes.count(503)))
        ]
        inspected = {
            (labels["method"], labels["status"]): value
            for labels, value in _samples(metrics, "steelsight_requests_total")
            if labels["route"] == "/v1/inspect"
        }
        assert inspected == {
            ("POST", "200"): float(codes.count(200) + 3),
            ("POST", "503"): float(codes.count(503)),
        }
    finally:
        stop_server(flood)


# -- clients a plant cannot trust -----------------------------------------------------------
def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # it answered, then closed on a client still sending
            return data
        if not chunk:
            return data
        data += chunk


def _server_rss(server: Server) -> int:
    import psutil

    return psutil.Process(server.process.pid).memory_info().rss


def test_query_parameters_out_of_range_are_422_never_500(server: Server) -> None:
    with server.client() as http:
        for query in (
            "offset=9223372036854775808",
            f"offset={2**64}",
            f"offset={10**30}",
            "offset=-1",
            f"limit={10**30}",
            "since=99999-01-01",
            "since=" + "9" * 5000,
        ):
            response = http.get(f"/v1/sheets?{query}")
            assert response.status_code == 422, (query, response.text[:300])
            assert response.json()["error"]["code"] == "invalid_request"
        assert http.get("/v1/sheets?offset=1000000000").status_code == 200


def test_a_streamed_upload_is_refused_once_it_passes_the_limit(server: Server) -> None:
    """A chunked multipart body (no Content-Length) is counted as it arrives: 413 after
    about the limit, not after the whole 256 MB is spooled to disk."""
    before = _server_rss(server)
    head = (
        "POST /v1/inspect HTTP/1.1\r\nHost: test\r\n"
        f"X-API-Key: {KEY}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = b'--b\r\nContent-Disposition: form-data; name="frame"; filename="f.jpg"\r\n'
    part += b"Content-Type: image/jpeg\r\n\r\n"
    chunk = b"\xff" * (1 << 20)
    sent = 0
    with _connect(server) as sock:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        try:
            while sent < 256 << 20:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except OSError:  # the server answered and closed: what should happen
            pass
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    assert sent < 64 << 20  # refused long before the end
    assert _server_rss(server) - before < 100 << 20
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_a_client_that_leaves_mid_upload_is_logged_as_gone_not_as_a_failure(
    server: Server,
) -> None:
    with _connect(server) as sock:
        sock.sendall(
            (
                f"POST /v1/inspect HTTP/1.1\r\nHost: test\r\nX-API-Key: {KEY}\r\n"
                "X-Request-ID: left-mid-upload\r\n"
                "Content-Type: image/jpeg\r\nContent-Length: 500000\r\n\r\n"
            ).encode()
            + b"\xff" * 1000
        )
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in _access_lines(server.log)]
        gone = [x for x in lines if x.get("request_id") == "left-mid-upload"]
        if gone:
            break
        time.sleep(0.2)
    assert [x["status"] for x in gone] == [499]
    log = server.log.read_text()
    assert "Traceback" not in log and "internal_error" not in log


def test_headers_beyond_the_limit_get_431(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 100_000)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"serve_max_head_bytes" in answer
    with server.client() as http:
        assert http.get("/healthz").status_code == 200


def test_slow_clients_are_timed_out(server: Server) -> None:
    """Head within serve_head_timeout_s (3 s here), body within serve_body_timeout_s (4 s)."""
    started = time.monotonic()
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")  # and nothing more
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 2.5 < time.monotonic() - started < 15
    started = time.monotonic()
    with _connect(server) as sock:
        sock.sendall(
            (
                f"POST /v1/inspect HTTP/1.1\r\nHost: test\r\nX-API-Key: {KEY}\r\n"
                "Content-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
            ).encode()
            + b"\xff" * 10
        )
        answer = _answer(sock)
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert b"serve_body_timeout_s" in answer
    assert 3.5 < time.monotonic() - started < 15
    with _connect(server) as sock:  # connects and says nothing: closed without an answer
        assert _answer(sock) == b""


def test_request_ids_are_echoed_only_when_short_and_plain(server: Server) -> None:
    with server.client(key=None) as http:
        kept = http.get("/healthz", headers={"X-Request-ID": "mes-42.a:b"})
        flood = http.get("/healthz", headers={"X-Request-ID": "x" * 4000})
        odd = http.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert kept.headers["X-Request-ID"] == "mes-42.a:b"
    for response in (flood, odd):
        assert response.status_code == 200
        assert len(response.headers["X-Request-ID"]) == 16
    assert "x" * 100 not in server.log.read_text()
