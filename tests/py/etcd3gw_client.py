"""Main operations of the `etcd3gw` Python client (etcd's JSON gateway) against one endpoint.

Usage: etcd3gw_client.py HOST PORT PREFIX. Prints one `ok <operation>` line per checked
operation and exits 0; any mismatch raises (non-zero exit).
"""

import sys
import threading

import etcd3gw


def main():
    host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    c = etcd3gw.client(host=host, port=port, timeout=10)

    assert c.put(prefix + "a", "1") is True
    assert c.get(prefix + "a") == [b"1"], c.get(prefix + "a")
    print("ok put/get")

    c.put(prefix + "b", "2")
    got = sorted((m["key"].decode(), v.decode()) for v, m in c.get_prefix(prefix))
    assert got == [(prefix + "a", "1"), (prefix + "b", "2")], got
    print("ok get_prefix")

    assert c.delete(prefix + "b") is True
    assert c.get(prefix + "b") == []
    print("ok delete")

    txn = {
        "compare": [
            {
                "key": etcd3gw.utils._encode(prefix + "a"),
                "result": "EQUAL",
                "target": "VALUE",
                "value": etcd3gw.utils._encode("1"),
            }
        ],
        "success": [
            {
                "request_put": {
                    "key": etcd3gw.utils._encode(prefix + "a"),
                    "value": etcd3gw.utils._encode("3"),
                }
            }
        ],
        "failure": [],
    }
    r = c.transaction(txn)
    assert r.get("succeeded") is True, r
    r = c.transaction(txn)
    assert r.get("succeeded", False) is False, r
    assert c.get(prefix + "a") == [b"3"]
    print("ok transaction")

    lease = c.lease(60)
    c.put(prefix + "leased", "x", lease=lease)
    assert lease.ttl() > 0, lease.ttl()
    assert [k.decode() for k in lease.keys()] == [prefix + "leased"], lease.keys()
    assert lease.refresh() > 0
    assert lease.revoke() is True
    assert c.get(prefix + "leased") == []
    print("ok lease")

    assert c.create(prefix + "c", "1") is True
    assert c.create(prefix + "c", "2") is False
    assert c.replace(prefix + "c", "1", "2") is True
    assert c.delete_prefix(prefix) is True
    print("ok create/replace/delete_prefix")

    events, cancel = c.watch(prefix + "w")
    got = []

    def consume():
        for ev in events:
            got.append((ev.get("type", "PUT"), ev["kv"]["key"].decode(), ev["kv"].get("value", b"").decode()))
            if len(got) == 2:
                break

    t = threading.Thread(target=consume)
    t.start()
    # etcd3gw's watch() returns before the server has created the watcher: wait for it
    # by writing until the first event is seen.
    for _ in range(100):
        c.put(prefix + "w", "v1")
        t.join(0.1)
        if got:
            break
    c.delete(prefix + "w")
    t.join(10)
    cancel()
    assert got[0] == ("PUT", prefix + "w", "v1"), got
    assert got[-1][0] in ("PUT", "DELETE"), got
    print("ok watch")

    st = c.status()
    assert st["version"].startswith("3."), st
    assert c.members()[0]["name"], c.members()
    print("ok status")


if __name__ == "__main__":
    main()
