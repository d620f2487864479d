"""Drives muster's Consul-compatible API with the real py-consul client.

Usage: python3 py_consul_client.py HOST PORT. Exits non-zero on the first
failed expectation; prints what it checked.
"""
import sys
import threading
import time

import consul

host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)


def expect(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what)


# Register with a TTL check; a new TTL check starts critical.
c.agent.service.register("pyweb", service_id="pyweb-1", address="10.1.0.1", port=8080,
                         tags=["v1", "eu"], check=consul.Check.ttl("30s"))
c.agent.service.register("pyweb", service_id="pyweb-2", address="10.1.0.2", port=8080, tags=["v1"])
index, nodes = c.health.service("pyweb")
expect(len(nodes) == 2, "both instances listed")
expect(int(index) >= 1, "an X-Consul-Index")
one = [n for n in nodes if n["Service"]["ID"] == "pyweb-1"][0]
expect(one["Checks"][0]["CheckID"] == "service:pyweb-1", "Consul's check id for a single check")
expect(one["Checks"][0]["Status"] == "critical", "a new TTL check starts critical")
_, passing = c.health.service("pyweb", passing=True)
expect([n["Service"]["ID"] for n in passing] == ["pyweb-2"], "passing= leaves out the critical one")

# Pass the TTL check.
c.agent.check.ttl_pass("service:pyweb-1", notes="all good")
_, passing = c.health.service("pyweb", passing=True)
expect(sorted(n["Service"]["ID"] for n in passing) == ["pyweb-1", "pyweb-2"], "after ttl_pass both pass")
_, tagged = c.health.service("pyweb", tag="eu")
expect([n["Service"]["ID"] for n in tagged] == ["pyweb-1"], "tag filter")

# Catalog.
_, services = c.catalog.services()
expect("pyweb" in services and "eu" in services["pyweb"], "catalog services with tags")
_, cat = c.catalog.service("pyweb")
expect(sorted(s["ServiceID"] for s in cat) == ["pyweb-1", "pyweb-2"], "catalog service")

# A blocking query returns on a change of its own service...
index, _ = c.health.service("pyweb")
result = {}


def block():
    result["value"] = c.health.service("pyweb", index=index, wait="20s")


t = threading.Thread(target=block)
start = time.time()
t.start()
time.sleep(0.3)
c.agent.service.deregister("pyweb-2")
t.join(15)
expect(not t.is_alive(), "the blocking query returned")
new_index, nodes = result["value"]
expect(int(new_index) > int(index), "with a newer index")
expect([n["Service"]["ID"] for n in nodes] == ["pyweb-1"], "showing the deregistration")

# ...and not on a change of another service.
c.agent.service.register("other", service_id="other-1", address="10.2.0.1", port=1)
index, _ = c.health.service("pyweb")
result.clear()
t = threading.Thread(target=lambda: result.setdefault("value", c.health.service("pyweb", index=index, wait="1s")))
t.start()
time.sleep(0.2)
c.agent.service.register("other", service_id="other-2", address="10.2.0.2", port=1)
t.join(10)
later_index, _ = result["value"]
expect(int(later_index) == int(index), "a change to another service did not wake it (it timed out unchanged)")

# Maintenance and agent self.
c.agent.service.maintenance("pyweb-1", True, reason="deploy")
_, passing = c.health.service("pyweb", passing=True)
expect(passing == [], "maintenance takes it out of the passing list")
me = c.agent.self()
expect(me["Config"]["Datacenter"] == "dc1", "agent self has a datacenter")
expect(c.status.leader() != "", "a leader")
print("all py-consul checks passed")
