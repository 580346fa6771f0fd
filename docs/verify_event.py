#!/usr/bin/env python3
"""Independent reference check of the event hash chain (docs/event-log.md).

Reads CloudEvents NDJSON (one event a line, in position order, as published
to JetStream or exported by the audit endpoint) on stdin and recomputes every
hash with nothing but the standard library. Prints the number of events
checked, or the first position that does not verify, and exits non-zero.
"""
import hashlib
import json
import struct
import sys

TAG = b"research-event/v1"


def canonical(event, data_bytes):
    aggregate_type = event["type"].split(".")[1]
    schema_version = event["type"].rsplit(".", 1)[1].lstrip("v")
    study_id = event["source"].split("/")[2]
    fields = [
        str(event["position"]), event["id"], aggregate_type, event["streamid"],
        str(event["streamversion"]), study_id, event["type"], schema_version,
        event["time"], event["actor"], event["reason"] or "",
        event["correlationid"], event["causationid"],
    ]
    out = bytearray(TAG)
    for field in [f.encode("utf-8") for f in fields] + [data_bytes]:
        out += struct.pack(">I", len(field)) + field
    return bytes(out)


def main():
    prev = "0" * 64
    count = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        event = json.loads(line)
        # `data` is the last member: its exact bytes sit between `"data":` and
        # the closing brace.
        data_bytes = line[line.index('"data":') + len('"data":'):-1].encode("utf-8")
        position = event["position"]
        if position != count + 1:
            sys.exit(f"position {count + 1}: missing (found {position})")
        if event["prevhash"] != prev:
            sys.exit(f"position {position}: prevhash does not match the previous hash")
        digest = hashlib.sha256(bytes.fromhex(prev) + canonical(event, data_bytes)).hexdigest()
        if digest != event["hash"]:
            sys.exit(f"position {position}: hash does not match its contents")
        prev = digest
        count += 1
    print(f"verified {count} events, head {prev}")


if __name__ == "__main__":
    main()
