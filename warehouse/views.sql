-- Views for analysts, over the committed tables. Each one is described in docs/warehouse.md.

-- Per archive and class: how many labels, on how many images, and how large.
CREATE OR REPLACE VIEW label_summary AS
SELECT
    l.archive_id,
    a.kind,
    l.class_id,
    l.class_name,
    count(*) AS n_labels,
    count(DISTINCT l.image_id) AS n_images,
    round(avg(l.area), 1) AS mean_area,
    sum(l.area)::BIGINT AS total_area
FROM labels AS l
JOIN archives AS a USING (archive_id)
GROUP BY ALL
ORDER BY l.archive_id, l.class_id;

-- One row per image with its label count: defect-free images have n_labels = 0.
CREATE OR REPLACE VIEW image_labels AS
SELECT
    i.archive_id,
    i.image_id,
    i.width,
    i.height,
    count(l.label_index) AS n_labels,
    coalesce(list(DISTINCT l.class_name ORDER BY l.class_name)
        FILTER (WHERE l.class_name IS NOT NULL), []) AS classes,
    coalesce(sum(l.area), 0)::BIGINT AS labelled_area
FROM images AS i
LEFT JOIN labels AS l USING (archive_id, image_id)
GROUP BY ALL;

-- Errors with the archive they belong to, newest import first.
CREATE OR REPLACE VIEW ingest_error_report AS
SELECT a.path AS archive_path, a.kind, e.source, e.source_row, e.field, e.error_kind, e.reason
FROM ingest_errors AS e
JOIN archives AS a USING (archive_id)
ORDER BY a.imported_at DESC, e.error_index;

-- One row per sheet seen on the line, with when its head passed the camera (null when
-- the recording has no timestamps), the recording it is in and the line and camera that
-- recorded it.
CREATE OR REPLACE VIEW sheet_passes AS
SELECT s.*, f.captured_at AS seen_at, a.path AS archive_path, a.line_id, a.camera_id
FROM sheets AS s
JOIN archives AS a ON a.archive_id = s.archive_id
LEFT JOIN frames AS f ON f.archive_id = s.archive_id AND f.frame_number = s.first_frame;

-- The latest pass of each identified sheet (newest seen_at, then the newest archive), with
-- how many passes it had: what the API's GET /v1/sheets/{sheet_id} answers.
CREATE OR REPLACE VIEW sheet_latest_pass AS
SELECT *, count(*) OVER (PARTITION BY sheet_id) AS passes
FROM sheet_passes
WHERE sheet_id <> 'unknown'
QUALIFY row_number() OVER (
    PARTITION BY sheet_id ORDER BY seen_at DESC NULLS LAST, archive_id DESC, sheet_index DESC
) = 1;

-- Each sheet pass with its production day and shift. Shifts are 8 hours from 06:00 UTC
-- (A 06-14, B 14-22, C 22-06): a C shift's sheets after midnight count to the day it
-- began. Passes without a time (recordings without timestamps) have neither.
CREATE OR REPLACE VIEW sheet_shifts AS
SELECT
    line_id,
    camera_id,
    archive_id,
    sheet_index,
    sheet_id,
    seen_at,
    CAST(seen_at - INTERVAL 6 HOUR AS DATE) AS production_day,
    CASE
        WHEN seen_at IS NULL THEN NULL
        WHEN hour(seen_at) >= 6 AND hour(seen_at) < 14 THEN 'A'
        WHEN hour(seen_at) >= 14 AND hour(seen_at) < 22 THEN 'B'
        ELSE 'C'
    END AS shift,
    grade,
    sheet_id <> 'unknown' AS identified,
    n_defects,
    defect_counts,
    defect_area_ratio
FROM sheet_passes;

-- Per line and production day, and per shift within it: sheets, how many were
-- identified, how many had a defect, defects per sheet and the grades given (whole_day:
-- the day's row, for all its shifts). quality_by_shift and quality_by_day read it.
CREATE OR REPLACE VIEW quality_rollup AS
SELECT
    line_id,
    production_day,
    shift,
    grouping(shift) = 1 AS whole_day,
    count(*) AS sheets,
    count(*) FILTER (WHERE identified) AS identified,
    count(*) FILTER (WHERE n_defects > 0) AS with_defects,
    round(avg(CAST(n_defects > 0 AS DOUBLE)), 4) AS defect_rate,
    round(avg(n_defects), 3) AS defects_per_sheet,
    round(avg(defect_area_ratio), 6) AS mean_defect_area_ratio,
    histogram(grade) AS grades
FROM sheet_shifts
GROUP BY GROUPING SETS ((line_id, production_day, shift), (line_id, production_day));

-- Per line, production day and shift: sheets, identified, defect rate, grades.
CREATE OR REPLACE VIEW quality_by_shift AS
SELECT * EXCLUDE (whole_day) FROM quality_rollup WHERE NOT whole_day
ORDER BY line_id, production_day, shift;

-- The same per line and production day.
CREATE OR REPLACE VIEW quality_by_day AS
SELECT * EXCLUDE (whole_day, shift) FROM quality_rollup WHERE whole_day
ORDER BY line_id, production_day;
