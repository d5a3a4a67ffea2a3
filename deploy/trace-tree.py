"""Prints one trace from Jaeger's query API as an indented waterfall, for deploy/demo.sh.

    python3 deploy/trace-tree.py JAEGER_QUERY_URL TRACE_ID

Each line: start offset, duration, a bar on a 30-column time scale, the span's name, its
service, and an error mark with the span's reason. The operator's `reconcile` spans are
counted on their parent's line rather than listed.
"""

import json
import sys
import urllib.request

WIDTH = 30


def main() -> None:
    base, trace_id = sys.argv[1], sys.argv[2]
    with urllib.request.urlopen(f"{base}/api/traces/{trace_id}", timeout=10) as r:
        data = json.load(r)["data"]
    if not data:
        print("    (no spans yet)")
        return
    trace = data[0]
    spans = {s["spanID"]: s for s in trace["spans"]}
    children = {}
    roots = []
    for s in spans.values():
        parents = [r["spanID"] for r in s.get("references", []) if r["refType"] == "CHILD_OF" and r["spanID"] in spans]
        (children.setdefault(parents[0], []) if parents else roots).append(s)
    start = min(s["startTime"] for s in spans.values())
    end = max(s["startTime"] + s["duration"] for s in spans.values())
    scale = max(end - start, 1)

    def tag(span, key):
        return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)

    def show(span, depth):
        service = trace["processes"][span["processID"]]["serviceName"]
        offset, duration = span["startTime"] - start, span["duration"]
        left = int(offset * WIDTH / scale)
        bar = " " * left + "#" * max(1, int(duration * WIDTH / scale))
        error = tag(span, "error") in (True, "true") or tag(span, "otel.status_code") == "ERROR"
        reason = tag(span, "mlmodel.failure.reason") or tag(span, "otel.status_description") or ""
        mark = f"  ERROR {reason}" if error else ""
        kids = sorted(children.get(span["spanID"], []), key=lambda s: s["startTime"])
        reconciles = sum(1 for k in kids if k["operationName"] == "reconcile")
        count = f" ({reconciles} reconciles)" if reconciles else ""
        name = "  " * depth + span["operationName"]
        print(f"    +{offset / 1e6:7.3f}s {duration / 1e6:8.3f}s |{bar:<{WIDTH}}| {name:<28} {service}{count}{mark}")
        for child in kids:
            if child["operationName"] != "reconcile":
                show(child, depth + 1)

    for root in sorted(roots, key=lambda s: s["startTime"]):
        show(root, 0)


if __name__ == "__main__":
    main()
