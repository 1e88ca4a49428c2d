-- Fleet findings, one row each, over the tables of schema.sql:
--
-- fleet_build_on_unlisted_host: an image started on a host that was built on a host not listed
--   in build_hosts (fill it with the hosts meant to build: CI runners, build farms).
-- fleet_build_push_deploy_chain (ATT&CK T1612, analytic AN0946 across hosts): an image built on
--   one host, pushed from it, then started on another host within window_secs of the build.
--
-- window_secs is a constant here so that the file runs as it is anywhere (clickhouse-client,
-- a server, chdb); change it to taste.
WITH 86400 AS window_secs,
lineage AS
(
    SELECT
        s.image_id AS image_id,
        b.host AS build_host,
        b.build_id AS build_id,
        s.host AS start_host,
        s.container_id AS container_id,
        s.image AS image,
        toInt64(dateDiff('second', b.ts, s.ts)) AS seconds_since_build,
        s.ts AS start_ts
    FROM starts AS s
    INNER JOIN builds AS b ON b.image_id = s.image_id
    WHERE s.image_id != '' AND b.host != s.host
)
SELECT
    'fleet_build_on_unlisted_host' AS rule,
    'high' AS severity,
    ['T1612'] AS attack,
    ['AN1261'] AS analytics,
    l.image_id AS image_id,
    l.build_host AS build_host,
    l.build_id AS build_id,
    '' AS pushed_reference,
    '' AS pushed_digest,
    l.start_host AS start_host,
    l.container_id AS container_id,
    l.seconds_since_build AS seconds_since_build,
    l.start_ts AS start_ts
FROM lineage AS l
WHERE l.build_host NOT IN (SELECT host FROM build_hosts)
UNION ALL
SELECT
    'fleet_build_push_deploy_chain' AS rule,
    'high' AS severity,
    ['T1612'] AS attack,
    ['AN0946'] AS analytics,
    l.image_id AS image_id,
    l.build_host AS build_host,
    l.build_id AS build_id,
    any(p.reference) AS pushed_reference,
    any(p.digest) AS pushed_digest,
    l.start_host AS start_host,
    l.container_id AS container_id,
    l.seconds_since_build AS seconds_since_build,
    l.start_ts AS start_ts
FROM lineage AS l
INNER JOIN pushes AS p ON p.host = l.build_host AND p.image_id = l.image_id
WHERE p.ts <= l.start_ts AND l.seconds_since_build BETWEEN 0 AND window_secs
GROUP BY image_id, build_host, build_id, start_host, container_id, seconds_since_build, start_ts
ORDER BY start_ts, rule
