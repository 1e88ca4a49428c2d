-- Fleet lineage: one row per container start on any host joined to the build of its image on
-- another host, by image id (the config digest, the same on every host that pulled the image) and
-- by pushed digest (a start by `repo@sha256:...` joined to the push of that digest). Needs the
-- tables of schema.sql. A start whose build is on its own host is the local sensor's lineage
-- (container_start.build_id) and is not repeated here.
--
-- joined_by: ['image_id'], ['digest'] or both. outbound_not_allowed: the build's outbound
-- destinations whose policy class was not `allowed` (`addr:port name policy`).
SELECT
    s.image_id AS image_id,
    b.host AS build_host,
    b.build_id AS build_id,
    s.host AS start_host,
    s.container_id AS container_id,
    s.name AS container_name,
    s.image AS image,
    toInt64(dateDiff('second', b.ts, s.ts)) AS seconds_since_build,
    arraySort(groupUniqArray(c.via)) AS joined_by,
    any(b.tags) AS build_tags,
    any(arrayMap(o -> concat(o.dst_addr, ':', toString(o.dst_port),
                             if(o.dns_name = '', '', concat(' ', o.dns_name)), ' ', o.policy),
                 arrayFilter(o -> o.policy != 'allowed', b.outbound))) AS outbound_not_allowed,
    s.ts AS start_ts,
    b.ts AS build_ts
FROM starts AS s
INNER JOIN
(
    -- Builds reachable by image id.
    SELECT host, build_id, image_id, '' AS digest, 'image_id' AS via FROM builds WHERE image_id != ''
    UNION ALL
    -- Builds reachable by a pushed digest: the push names its build (or its image id).
    SELECT b.host AS host, b.build_id AS build_id, p.image_id AS image_id, p.digest AS digest, 'digest' AS via
    FROM pushes AS p
    INNER JOIN builds AS b ON b.host = p.host AND (b.build_id = p.build_id OR b.image_id = p.image_id)
    WHERE p.digest != ''
) AS c
    ON (c.via = 'image_id' AND s.image_id != '' AND s.image_id = c.image_id)
    OR (c.via = 'digest' AND s.image_digest != '' AND s.image_digest = c.digest)
INNER JOIN builds AS b ON b.host = c.host AND b.build_id = c.build_id
WHERE b.host != s.host
GROUP BY image_id, build_host, build_id, start_host, container_id, container_name, image,
    seconds_since_build, start_ts, build_ts
ORDER BY start_ts, build_host, build_id
