#!/usr/bin/env python3
"""Validates the OCSF events of a `format=ocsf` sink with the OCSF models of py-ocsf-models.
Used by tests/tests/fleet.rs.

    ocsf_validate.py FILE...

Prints one JSON object: {"ocsf_version", "lines", "classes": {"2004": n, ...},
"errors": [{"line", "error"}...] (the first 20), "error_count", "findings": [finding_info...]}.

Every event is validated as a py-ocsf-models BaseEvent (metadata and its product, severity_id,
status_id ...); Detection Findings (2004) as a DetectionFinding (finding_info, attacks,
analytic, evidences ...); the objects the library models inside the other classes (the DNS
query, the URL of an HTTP request, containers and images in evidences) with their models. Keys
that a model does not know are errors unless OCSF 1.5 defines them and the library does not model
them yet (ALSO_DEFINED below), so a misspelt attribute cannot pass.
"""
import json
import sys
import typing

try:
    from pydantic import BaseModel, ValidationError
    from py_ocsf_models import OCSF_VERSION
    from py_ocsf_models.events.base_event import BaseEvent
    from py_ocsf_models.events.findings.detection_finding import DetectionFinding
    from py_ocsf_models.objects.container import Container
    from py_ocsf_models.objects.dns_query import DNSQuery
    from py_ocsf_models.objects.evidence_artifacts import EvidenceArtifacts
    from py_ocsf_models.objects.image import Image
    from py_ocsf_models.objects.url import URL
except ImportError as e:
    sys.exit(f"{e}: install py-ocsf-models==0.10.0 (`cargo xtask setup` does)")

# Attributes OCSF 1.5 defines that py-ocsf-models 0.10 leaves out of these models.
ALSO_DEFINED = {
    # Event-level attributes of the host and container profiles and of every class.
    DetectionFinding: {"device", "actor", "time"},
    # Listed as TODO in the library's EvidenceArtifacts.
    EvidenceArtifacts: {"container", "src_endpoint", "dst_endpoint", "actor", "process"},
}

COMMON = {"class_uid", "class_name", "category_uid", "category_name", "activity_id",
          "activity_name", "type_uid", "type_name", "time", "device", "actor", "duration"}
# class_uid: (category_uid, attributes beyond the base event (OCSF 1.5), required ones).
CLASSES = {
    0: (0, set(), {"unmapped"}),
    1007: (1, {"process", "exit_code"}, {"process", "actor", "device"}),
    2004: (2, None, {"finding_info", "evidences"}),
    4001: (4, {"src_endpoint", "dst_endpoint", "connection_info"}, {"dst_endpoint", "connection_info", "actor"}),
    4002: (4, {"src_endpoint", "dst_endpoint", "http_request", "http_response"}, {"http_request", "src_endpoint"}),
    4003: (4, {"src_endpoint", "dst_endpoint", "query", "answers", "rcode", "rcode_id"}, {"query"}),
}


def model_of(annotation):
    """The BaseModel class inside Optional[...] / list[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in typing.get_args(annotation):
        m = model_of(a)
        if m:
            return m
    return None


def unknown_keys(model, data, path):
    """Keys of `data` that `model` (recursively) does not define."""
    out = []
    if isinstance(data, list):
        for i, d in enumerate(data):
            out += unknown_keys(model, d, f"{path}[{i}]")
        return out
    if not isinstance(data, dict):
        return out
    fields = model.model_fields
    for k, v in data.items():
        if k in fields:
            sub = model_of(fields[k].annotation)
            if sub:
                out += unknown_keys(sub, v, f"{path}.{k}")
        elif k not in ALSO_DEFINED.get(model, set()):
            out.append(f"{path}.{k}")
    return out


def check(ev):
    errs = []
    cu = ev.get("class_uid")
    if cu not in CLASSES:
        return [f"class_uid {cu} is none of {sorted(CLASSES)}"]
    cat, attrs, required = CLASSES[cu]
    if ev.get("category_uid") != cat:
        errs.append(f"category_uid {ev.get('category_uid')} for class {cu}, expected {cat}")
    if ev.get("type_uid") != cu * 100 + ev.get("activity_id", -1):
        errs.append(f"type_uid {ev.get('type_uid')} is not class_uid*100+activity_id")
    if not isinstance(ev.get("time"), int):
        errs.append("time is not an integer (ms since the epoch)")
    if not str(ev.get("metadata", {}).get("version", "")).startswith("1."):
        errs.append("metadata.version is not OCSF 1.x")
    if not ev.get("metadata", {}).get("product", {}).get("name"):
        errs.append("metadata.product.name is missing")
    for r in required:
        if r not in ev:
            errs.append(f"{r} is missing (required for class {cu} here)")
    try:
        BaseEvent.model_validate(ev)
    except ValidationError as e:
        errs.append(f"BaseEvent: {e}")
    if cu == 2004:
        try:
            DetectionFinding.model_validate(ev)
        except ValidationError as e:
            errs.append(f"DetectionFinding: {e}")
        errs += [f"unknown key {k}" for k in unknown_keys(DetectionFinding, ev, "")]
        for i, e in enumerate(ev.get("evidences", [])):
            c = e.get("container")
            if c is not None:
                try:
                    Container.model_validate(c)
                    if "image" in c:
                        Image.model_validate(c["image"])
                except ValidationError as x:
                    errs.append(f"evidences[{i}].container: {x}")
    else:
        allowed = COMMON | set(BaseEvent.model_fields) | attrs
        errs += [f"unknown key .{k}" for k in ev if k not in allowed]
        if "query" in ev:
            try:
                DNSQuery.model_validate(ev["query"])
            except ValidationError as x:
                errs.append(f"query: {x}")
        if "http_request" in ev:
            try:
                URL.model_validate(ev["http_request"].get("url"))
            except ValidationError as x:
                errs.append(f"http_request.url: {x}")
    return errs


def main():
    rep = {"ocsf_version": OCSF_VERSION, "lines": 0, "classes": {}, "errors": [],
           "error_count": 0, "findings": []}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rep["lines"] += 1
                try:
                    ev = json.loads(line)
                    errs = check(ev)
                except ValueError as e:
                    ev, errs = {}, [f"not JSON: {e}"]
                cu = str(ev.get("class_uid"))
                rep["classes"][cu] = rep["classes"].get(cu, 0) + 1
                if ev.get("class_uid") == 2004:
                    rep["findings"].append({"finding_info": ev.get("finding_info"),
                                            "severity_id": ev.get("severity_id"),
                                            "evidences": ev.get("evidences")})
                if errs:
                    rep["error_count"] += 1
                    if len(rep["errors"]) < 20:
                        rep["errors"].append({"file": path, "line": n, "error": errs})
    json.dump(rep, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
