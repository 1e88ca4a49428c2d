#!/usr/bin/env python3
"""Loads sensor NDJSON streams into ClickHouse's engine in-process (chdb) through
deploy/clickhouse/schema.sql, then runs query files over them. Used by tests/tests/fleet.rs.

    clickhouse_load.py --schema schema.sql [--records-schema records.schema.json]
                       [--build-host HOST]... [--query FILE]... STREAM.ndjson...

Prints one JSON object on stdout:
    {"engine": "26.x", "loads": [{"file", "lines", "loaded", "rejected", "errors"}],
     "missing_columns": [...], "rows": {"host": n}, "queries": {"FILE": [rows...]}}

Lines are inserted exactly as written, with `INSERT INTO sensor_records FORMAT JSONEachRow`
under strict settings: an unknown field, a value of the wrong type or a line that is not JSON
rejects the line. A file is inserted whole first; if that fails, line by line, so that every
rejected line is counted and the first few errors are shown.
"""
import argparse
import json
import sys
import tempfile

try:
    import chdb
    from chdb import session
except ImportError as e:
    sys.exit(f"{e}: install chdb==4.4.0 (`cargo xtask setup` does)")

STRICT = (
    "input_format_skip_unknown_fields = 0, "
    "input_format_allow_errors_num = 0, "
    "input_format_allow_errors_ratio = 0, "
    "date_time_input_format = 'best_effort', "
    "input_format_json_read_objects_as_strings = 1, "
    "input_format_json_read_arrays_as_strings = 1, "
    "input_format_json_read_numbers_as_strings = 1, "
    "input_format_json_read_bools_as_strings = 1"
)
INSERT = f"INSERT INTO sensor_records SETTINGS {STRICT} FORMAT JSONEachRow\n"


def statements(sql):
    """Splits on `;` outside quotes and `--` comments (the file's own comments may hold `;`)."""
    out, cur, i, quote = [], [], 0, None
    while i < len(sql):
        c = sql[i]
        if quote:
            cur.append(c)
            if c == "\\" and i + 1 < len(sql):
                cur.append(sql[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"`":
            quote = c
            cur.append(c)
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = len(sql) if j < 0 else j
            continue
        elif c == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def load(sess, path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = [l for l in f.read().split("\n") if l.strip()]
    rep = {"file": path, "lines": len(lines), "loaded": 0, "rejected": 0, "errors": []}
    if not lines:
        return rep
    try:
        sess.query(INSERT + "\n".join(lines) + "\n")
        rep["loaded"] = len(lines)
        return rep
    except Exception:
        pass
    for n, line in enumerate(lines, 1):
        try:
            sess.query(INSERT + line + "\n")
            rep["loaded"] += 1
        except Exception as e:
            rep["rejected"] += 1
            if len(rep["errors"]) < 5:
                rep["errors"].append({"line": n, "error": str(e).strip()[:400], "text": line[:300]})
    return rep


def top_level_fields(records_schema):
    s = json.load(open(records_schema))
    fields = set(s.get("properties", {})) | {"kind"}
    for o in s["oneOf"]:
        fields |= set(s["$defs"][o["$ref"].split("/")[-1]].get("properties", {}))
    return fields


def rows(sess, sql):
    text = sess.query(sql, "JSONEachRow").bytes().decode()
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schema", required=True)
    ap.add_argument("--records-schema")
    ap.add_argument("--build-host", action="append", default=[])
    ap.add_argument("--query", action="append", default=[])
    ap.add_argument("streams", nargs="*")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-chdb-") as db:
        sess = session.Session(db)
        for st in statements(open(a.schema).read()):
            sess.query(st)
        out = {"engine": rows(sess, "SELECT version() AS v")[0]["v"], "chdb": chdb.__version__}
        if a.records_schema:
            cols = {r["name"] for r in rows(sess, "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'sensor_records'")}
            out["missing_columns"] = sorted(top_level_fields(a.records_schema) - cols)
        for h in a.build_host:
            sess.query(f"INSERT INTO build_hosts VALUES ('{h}', 'from the test')")
        out["loads"] = [load(sess, p) for p in a.streams]
        out["rows"] = {r["host"]: int(r["n"]) for r in rows(sess, "SELECT host, count() AS n FROM sensor_records GROUP BY host")}
        out["derived"] = {t: int(rows(sess, f"SELECT count() AS n FROM {t}")[0]["n"]) for t in ("builds", "pushes", "starts", "findings")}
        out["queries"] = {}
        for q in a.query:
            res = []
            for st in statements(open(q).read()):
                res.extend(rows(sess, st))
            out["queries"][q.rsplit("/", 1)[-1]] = res
        sess.close()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
