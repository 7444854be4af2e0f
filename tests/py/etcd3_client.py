"""Main operations of the `etcd3` Python client (gRPC) against one endpoint.

Usage: etcd3_client.py HOST PORT PREFIX. Prints one `ok <operation>` line per checked
operation and exits 0; any mismatch raises (non-zero exit). Needs protobuf<=3.20 with
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (etcd3 0.12's generated code is that old).
"""

import sys
import threading

import etcd3


def main():
    host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    c = etcd3.client(host=host, port=port, timeout=10)

    c.put(prefix + "a", "1")
    value, meta = c.get(prefix + "a")
    assert value == b"1", value
    assert meta.key == (prefix + "a").encode(), meta.key
    print("ok put/get")

    c.put(prefix + "b", "2")
    got = sorted((m.key.decode(), v.decode()) for v, m in c.get_prefix(prefix))
    assert got == [(prefix + "a", "1"), (prefix + "b", "2")], got
    print("ok get_prefix")

    assert c.delete(prefix + "b") is True
    assert c.get(prefix + "b")[0] is None
    print("ok delete")

    ok, _ = c.transaction(
        compare=[c.transactions.value(prefix + "a") == "1"],
        success=[c.transactions.put(prefix + "a", "3")],
        failure=[],
    )
    assert ok is True
    ok, _ = c.transaction(
        compare=[c.transactions.value(prefix + "a") == "1"],
        success=[],
        failure=[c.transactions.get(prefix + "a")],
    )
    assert ok is False
    assert c.get(prefix + "a")[0] == b"3"
    print("ok transaction")

    lease = c.lease(60)
    c.put(prefix + "leased", "x", lease=lease)
    assert lease.remaining_ttl > 0, lease.remaining_ttl
    keys = sorted(k.decode() for k in lease.keys)
    assert keys == [prefix + "leased"], keys
    lease.refresh()
    lease.revoke()
    assert c.get(prefix + "leased")[0] is None
    print("ok lease")

    events, cancel = c.watch(prefix + "w")
    got = []

    def consume():
        for ev in events:
            got.append((type(ev).__name__, ev.key.decode(), ev.value.decode()))
            if len(got) == 2:
                break

    t = threading.Thread(target=consume)
    t.start()
    # The watcher is registered when watch() returns: these land after it.
    c.put(prefix + "w", "v1")
    c.delete(prefix + "w")
    t.join(10)
    cancel()
    assert got == [("PutEvent", prefix + "w", "v1"), ("DeleteEvent", prefix + "w", "")], got
    print("ok watch")

    status = c.status()
    assert status.version.startswith("3."), status.version
    print("ok status")


if __name__ == "__main__":
    main()
