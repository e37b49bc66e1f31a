"""Interop: a team's existing Python clients work with the connector unchanged.

The confluent-kafka client (PyPI) produces raw vacancy events, as JSON and as Avro bodies
written by fastavro in the Confluent framing, the real uwe-connect binary enriches them,
and the same client consumes the enriched records. Run by scripts/test after the Rust
tests, against the same broker: python3 tests/interop/confluent_clients.py BIN BROKER
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pipeline(name, fmt, topics, group, broker):
    return f"""
[pipeline]
name = "{name}"
event_type = "vacancy"
[kafka]
brokers = "{broker}"
group_id = "{group}"
input_topics = ["{topics[0]}"]
output_topic = "{topics[1]}"
dead_letter_topic = "{topics[2]}"
[kafka.consumer_options]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "500"
[codec]
format = "{fmt}"
schema_dir = "{ROOT}/schemas/registry"
reader_schema = "{ROOT}/schemas/avro/vacancy.avsc"
[[targets]]
name = "occupations"
space = "esco-occupations"
fields = ["title"]
mode = "whole"
k = 3
[[targets]]
name = "skills"
space = "esco-skills"
fields = ["description"]
mode = "sentences"
k = 5
[model]
dir = "{ROOT}/models/base"
data_dir = "{ROOT}/data"
cache_dir = "{ROOT}/target/test-space-cache"
[encoder]
device = "cpu"
onnxruntime = "{ROOT}/.uwe/lib/libonnxruntime.so"
[http]
listen = ""
"""


VACANCIES = [
    {"id": "py-1", "title": "Registered nurse", "description": "You care for patients on a surgical ward. You administer medication."},
    {"id": "py-2", "title": "Java developer", "description": "You build REST services in Java. You write unit tests."},
    {"id": "py-3", "title": "Truck driver", "description": "You deliver goods across Belgium. You hold a C licence."},
]


def run_case(bin_path, broker, fmt):
    tag = f"{os.getpid()}-{fmt}-{int(time.time() * 1000) % 10**9}"
    topics = [f"py-in-{tag}", f"py-out-{tag}", f"py-dlq-{tag}"]
    admin = AdminClient({"bootstrap.servers": broker})
    for f in admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics]).values():
        f.result(30)

    producer = Producer({"bootstrap.servers": broker})
    schema = fastavro.parse_schema(json.load(open(os.path.join(ROOT, "schemas/registry/2-vacancy-v2.avsc"))))
    for v in VACANCIES:
        if fmt == "json":
            body = json.dumps(v).encode()
        else:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, schema, {**v, "location": None, "language": "en", "posted_date": None, "source": "py"})
            body = b"\x00" + struct.pack(">I", 2) + buf.getvalue()
        producer.produce(topics[0], key=v["id"], value=body, headers=[("origin", b"python")])
    assert producer.flush(30) == 0, "python producer could not deliver"

    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "p.toml")
        open(cfg, "w").write(pipeline(f"py-{fmt}", fmt, topics, f"py-group-{tag}", broker))
        log = open(os.path.join(d, "log"), "w+")
        proc = subprocess.Popen([bin_path, "run", "--config", cfg], stdout=subprocess.DEVNULL, stderr=log)
        try:
            consumer = Consumer({"bootstrap.servers": broker, "group.id": f"py-reader-{tag}", "auto.offset.reset": "earliest"})
            consumer.subscribe([topics[1]])
            got = {}
            deadline = time.time() + 240
            while len(got) < len(VACANCIES) and time.time() < deadline:
                m = consumer.poll(0.5)
                if m is None or m.error():
                    continue
                rec = json.loads(m.value())
                got[m.key().decode()] = (rec, dict(m.headers() or []))
            consumer.close()
            if len(got) != len(VACANCIES):
                log.seek(0)
                raise AssertionError(f"{fmt}: got {len(got)} of {len(VACANCIES)} records; connector log:\n{log.read()}")
            for v in VACANCIES:
                rec, headers = got[v["id"]]
                assert rec["source"]["id"] == v["id"], rec
                assert headers.get("origin") == b"python", headers
                occ = [l["label"] for l in rec["labels"]["occupations"]]
                assert occ, rec
            nurse = [l["label"] for l in got["py-1"][0]["labels"]["occupations"]]
            assert any("nurse" in l for l in nurse), nurse
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0, "connector did not exit 0 after SIGTERM"
    print(f"interop {fmt}: ok ({len(VACANCIES)} records produced and consumed by confluent-kafka {__import__('confluent_kafka').version()[0]})")


if __name__ == "__main__":
    bin_path, broker = sys.argv[1], sys.argv[2]
    run_case(bin_path, broker, "json")
    run_case(bin_path, broker, "avro")
