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
-- the recording has no timestamps) and the recording it is in.
CREATE OR REPLACE VIEW sheet_passes AS
SELECT s.*, f.captured_at AS seen_at, a.path AS archive_path
FROM sheets AS s
JOIN archives AS a ON a.archive_id = s.archive_id
LEFT JOIN frames AS f ON f.archive_id = s.archive_id AND f.frame_number = s.first_frame;
