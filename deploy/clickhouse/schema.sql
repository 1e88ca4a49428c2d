-- sensor records in ClickHouse: the NDJSON lines exactly as the sensor writes them, inserted with
--     INSERT INTO sensor_records FORMAT JSONEachRow
-- (what Vector's and Fluent Bit's ClickHouse outputs send), and one table per derived kind filled
-- by materialized views. Statements are separated by `;`: run with
--     clickhouse-client --multiquery < deploy/clickhouse/schema.sql
-- or by the engine in-process (chdb, as the tests do). docs/collectors.md#clickhouse says which
-- insert settings to use and what to change on a cluster.
--
-- Every top-level field of every record kind (schema/records.schema.json) is a column, so an
-- insert with input_format_skip_unknown_fields=0 rejects a line only when the sensor wrote a field
-- this table does not know (tests/tests/fleet.rs checks both). The fields queries join and filter
-- on are typed; every other field is a String holding what the line carried: nested objects and
-- arrays as their JSON text (input_format_json_read_objects_as_strings and
-- ..._arrays_as_strings, on by default), numbers and booleans as written. A field a kind does not
-- have is the column's default ('' or 0).
--
-- Stream sinks may repeat a line at a broken connection (docs/operations.md#sinks): the tables
-- are ReplacingMergeTree keyed on (host, id, ts), which deduplicates such repeats when parts
-- merge; queries that must not count a repeat twice aggregate on that key.

CREATE TABLE IF NOT EXISTS sensor_records
(
    -- The envelope of every record.
    schema_version UInt32,
    id UInt64,
    ts DateTime64(9, 'UTC'),
    host LowCardinality(String),
    kind LowCardinality(String),
    -- Typed: what the fleet queries join and filter on.
    build_id String,
    image_id String,
    digest String,
    dockerfile String,
    container_id String,
    rule LowCardinality(String),
    severity LowCardinality(String),
    summary String,
    attack Array(String),
    analytics Array(String),
    image String,
    name String,
    -- containerd's namespace of an image_discovered.
    namespace String,
    reference String,
    registry String,
    tags Array(String),
    builder LowCardinality(String),
    status LowCardinality(String),
    runtime LowCardinality(String),
    started Nullable(DateTime64(9, 'UTC')),
    duration_ms Nullable(UInt64),
    seconds_since_build Nullable(UInt64),
    -- Kept as written (objects and arrays as JSON text).
    addrs String,
    base_layers String,
    api_version String,
    argv String,
    argv_truncated String,
    base_images String,
    child_pid String,
    child_start_time_ns String,
    client String,
    content_length String,
    content_type String,
    created String,
    data String,
    details String,
    dockerfile_missing String,
    dockerfile_status String,
    drops String,
    dst_addr String,
    dst_port String,
    endpoint String,
    entries String,
    envelope String,
    error String,
    events String,
    evidence String,
    exit_code String,
    failed_step String,
    family String,
    fd String,
    filename String,
    final_report String,
    flags String,
    image_origin String,
    header_names String,
    history String,
    instructions String,
    kernel String,
    kernel_hooks String,
    file_events String,
    dns_events String,
    kubernetes String,
    layers String,
    latency_us String,
    local_addr String,
    local_port String,
    method String,
    offset String,
    op String,
    outbound String,
    params String,
    parent String,
    partial String,
    path String,
    path_truncated String,
    peer_addr String,
    peer_port String,
    probes String,
    probes_failed String,
    probes_unused String,
    process String,
    protocol String,
    query String,
    query_name String,
    query_type String,
    raw String,
    rcode String,
    record_ids String,
    records String,
    repo_digests String,
    result String,
    ringbuf String,
    runtime_names String,
    seeded_processes String,
    seen_until String,
    server_addr String,
    server_port String,
    sha256 String,
    signal String,
    size String,
    skipped String,
    source String,
    src_addr String,
    src_port String,
    start_time_ns String,
    statement String,
    steps String,
    storage String,
    stored String,
    text String,
    tracked_processes String,
    truncated String,
    uptime_s String,
    user_agent String,
    version String,
    write_len String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (kind, host, ts, id)
TTL toDateTime(ts) + INTERVAL 30 DAY;

-- Builds (from build_finished): who built what on which host, and where its steps connected.
CREATE TABLE IF NOT EXISTS builds
(
    ts DateTime64(9, 'UTC'),
    host LowCardinality(String),
    id UInt64,
    build_id String,
    builder LowCardinality(String),
    status LowCardinality(String),
    image_id String,
    tags Array(String),
    started Nullable(DateTime64(9, 'UTC')),
    duration_ms Nullable(UInt64),
    client_transport LowCardinality(String),
    client_exe String,
    client_user String,
    client_addr String,
    outbound Array(Tuple(dst_addr String, dst_port UInt16, protocol String, dns_name String, count UInt64, made_by String, policy String))
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (host, build_id, id, ts)
-- Lineage outlives the raw records: an image may be started months after its build.
TTL toDateTime(ts) + INTERVAL 365 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS builds_mv TO builds AS
SELECT
    ts, host, id, build_id, builder, status, image_id, tags, started, duration_ms,
    JSONExtractString(client, 'transport') AS client_transport,
    JSONExtractString(client, 'exe') AS client_exe,
    JSONExtractString(client, 'user') AS client_user,
    JSONExtractString(client, 'addr') AS client_addr,
    JSONExtract(if(outbound = '', '[]', outbound),
        'Array(Tuple(dst_addr String, dst_port UInt16, protocol String, dns_name String, count UInt64, made_by String, policy String))') AS outbound
FROM sensor_records
WHERE kind = 'build_finished';

-- Pushes (from image_push): which build's image went to which registry under which digest.
CREATE TABLE IF NOT EXISTS pushes
(
    ts DateTime64(9, 'UTC'),
    host LowCardinality(String),
    id UInt64,
    reference String,
    digest String,
    registry String,
    image_id String,
    build_id String,
    client_exe String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (host, digest, id, ts)
TTL toDateTime(ts) + INTERVAL 365 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS pushes_mv TO pushes AS
SELECT ts, host, id, reference, digest, registry, image_id, build_id,
    JSONExtractString(client, 'exe') AS client_exe
FROM sensor_records
WHERE kind = 'image_push';

-- Container starts (from container_start). image_digest is the digest of a start by digest
-- (`repo@sha256:...`), '' otherwise.
CREATE TABLE IF NOT EXISTS starts
(
    ts DateTime64(9, 'UTC'),
    host LowCardinality(String),
    id UInt64,
    container_id String,
    name String,
    image String,
    image_digest String,
    image_id String,
    runtime LowCardinality(String),
    build_id String,
    seconds_since_build Nullable(UInt64),
    k8s_namespace String,
    k8s_pod String,
    client_exe String
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (host, container_id, id, ts)
TTL toDateTime(ts) + INTERVAL 365 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS starts_mv TO starts AS
SELECT ts, host, id, container_id, name, image,
    if(position(image, '@') > 0, substring(image, position(image, '@') + 1), '') AS image_digest,
    image_id, runtime, build_id, seconds_since_build,
    JSONExtractString(kubernetes, 'namespace') AS k8s_namespace,
    JSONExtractString(kubernetes, 'pod') AS k8s_pod,
    JSONExtractString(client, 'exe') AS client_exe
FROM sensor_records
WHERE kind = 'container_start';

-- Findings (from finding).
CREATE TABLE IF NOT EXISTS findings
(
    ts DateTime64(9, 'UTC'),
    host LowCardinality(String),
    id UInt64,
    rule LowCardinality(String),
    severity LowCardinality(String),
    summary String,
    attack Array(String),
    analytics Array(String),
    build_id String,
    container_id String,
    image_id String,
    details String,
    evidence_record_ids Array(UInt64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(ts)
ORDER BY (host, rule, id, ts)
TTL toDateTime(ts) + INTERVAL 365 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS findings_mv TO findings AS
SELECT ts, host, id, rule, severity, summary, attack, analytics, build_id, container_id, image_id,
    details,
    JSONExtract(if(evidence = '', '{}', evidence), 'record_ids', 'Array(UInt64)') AS evidence_record_ids
FROM sensor_records
WHERE kind = 'finding';

-- The hosts allowed to build images, filled by the user (fleet_findings.sql reports images
-- started anywhere that were built on a host not in this list):
--     INSERT INTO build_hosts VALUES ('ci-runner-1', 'CI'), ('ci-runner-2', 'CI');
CREATE TABLE IF NOT EXISTS build_hosts
(
    host String,
    note String
)
ENGINE = ReplacingMergeTree
ORDER BY host
