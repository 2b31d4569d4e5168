"""The traffic driver splits requests exactly as the HTTPRoute weights say, and only to loopback."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from canarist.devstack.procs import wait_until
from canarist.devstack.traffic import SmoothWeightedRoundRobin, TrafficDriver, route_weights


def picks(rr: SmoothWeightedRoundRobin, n: int) -> Counter:
    return Counter(rr.next() for _ in range(n))


@pytest.mark.parametrize(("canary", "primary"), [(1, 99), (5, 95), (20, 80), (50, 50), (0, 100), (100, 0)])
def test_exact_proportions_over_every_cycle(canary, primary):
    rr = SmoothWeightedRoundRobin({"web-primary": primary, "web-canary": canary})
    for _ in range(3):  # exact in every cycle of 100, not just on average
        assert picks(rr, 100) == Counter({"web-primary": primary, "web-canary": canary}) - Counter()


def test_one_percent_of_200_requests_is_exactly_two():
    rr = SmoothWeightedRoundRobin({"web-primary": 99, "web-canary": 1})
    assert picks(rr, 200)["web-canary"] == 2


def test_small_weight_is_spread_not_bunched():
    rr = SmoothWeightedRoundRobin({"web-primary": 80, "web-canary": 20})
    order = [rr.next() for _ in range(100)]
    # Every window of 10 consecutive requests holds exactly 2 canary requests.
    assert {order[i:i + 10].count("web-canary") for i in range(0, 100, 10)} == {2}


def test_unnormalised_weights_and_three_backends():
    rr = SmoothWeightedRoundRobin({"a": 3, "b": 2, "c": 1})
    assert picks(rr, 60) == Counter({"a": 30, "b": 20, "c": 10})


def test_all_zero_or_no_weights_picks_nothing():
    assert SmoothWeightedRoundRobin({"a": 0, "b": 0}).next() is None
    assert SmoothWeightedRoundRobin().next() is None


def test_weight_change_is_exact_from_the_next_pick():
    rr = SmoothWeightedRoundRobin({"web-primary": 99, "web-canary": 1})
    picks(rr, 37)  # mid-cycle, with credit built up
    assert rr.set_weights({"web-primary": 80, "web-canary": 20}) is True
    assert picks(rr, 100) == Counter({"web-primary": 80, "web-canary": 20})
    assert rr.set_weights({"web-primary": 80, "web-canary": 20}) is False, "same weights: no restart"
    assert picks(rr, 50) == Counter({"web-primary": 40, "web-canary": 10})
    rr.set_weights({"web-primary": 0, "web-canary": 100})
    assert picks(rr, 10) == Counter({"web-canary": 10})
    rr.set_weights({})
    assert rr.next() is None


def test_same_weights_restart_nothing_so_long_runs_stay_exact():
    rr = SmoothWeightedRoundRobin({"web-primary": 95, "web-canary": 5})
    total = Counter()
    for _ in range(40):  # the driver re-reads the route every second with unchanged weights
        rr.set_weights({"web-primary": 95, "web-canary": 5})
        total += picks(rr, 7)
    assert total == Counter({"web-primary": 266, "web-canary": 14})


def test_negative_weight_is_refused():
    with pytest.raises(ValueError):
        SmoothWeightedRoundRobin({"a": -1, "b": 2})


def test_route_weights_reads_first_rule_and_defaults_weight_to_one():
    route = {"spec": {"rules": [
        {"backendRefs": [
            {"name": "web-primary", "port": 80, "weight": 90},
            {"name": "web-canary", "port": 80, "weight": 10},
            {"name": "web-canary", "port": 8080, "weight": 5},  # same Service twice: weights add up
            {"name": "mirror", "group": "example.com", "kind": "Bucket", "weight": 50},  # not a Service
            {"name": "plain"},
        ]},
        {"backendRefs": [{"name": "other-rule", "weight": 100}]},
    ]}}
    assert route_weights(route) == {"web-primary": 90, "web-canary": 15, "plain": 1}
    assert route_weights({"spec": {"rules": []}}) == {}
    assert route_weights({}) == {}


@pytest.mark.parametrize("url", [
    "http://localhost:8080", "http://10.0.0.1:80", "https://127.0.0.1:8443", "http://127.0.0.1",
    "http://127.0.0.1.example.com:80",
])
def test_only_loopback_backends_are_accepted(url):
    with pytest.raises(ValueError, match="127.0.0.1"):
        TrafficDriver(None, "ns", "web", {"web-canary": url})


def test_loopback_backend_is_accepted():
    driver = TrafficDriver(None, "ns", "web", {"web-primary": "http://127.0.0.1:1234/"})
    assert driver.backends == {"web-primary": "http://127.0.0.1:1234"}
    assert driver.sent == {} and driver.weights == {} and not driver.running


# -- the driver's loop, against in-process stand-ins and a scripted route --------------------------

class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_ins():
    servers = {name: ThreadingHTTPServer(("127.0.0.1", 0), _Answer) for name in ("web-primary", "web-canary")}
    for server in servers.values():
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {name: f"http://127.0.0.1:{server.server_address[1]}" for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


class _ScriptedRoutes:
    """Stands in for CustomObjectsApi: the route is whatever the test last set (None: missing)."""

    def __init__(self):
        self.route = None

    def set(self, weights):
        self.route = None if weights is None else {"spec": {"rules": [{"backendRefs": [
            {"name": name, "port": 80, "weight": w} for name, w in weights.items()]}]}}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **_):
        assert (group, version, plural, namespace, name) == ("gateway.networking.k8s.io", "v1", "httproutes",
                                                            "ns", "web")
        if self.route is None:
            raise kubernetes.client.ApiException(status=404, reason="Not Found")
        return self.route


def _driver(stand_ins, routes, **kwargs):
    driver = TrafficDriver(None, "ns", "web", stand_ins, rps=200, poll_interval=0.05, **kwargs)
    driver._custom = routes
    return driver


def test_driver_follows_the_route(stand_ins):
    routes = _ScriptedRoutes()
    with _driver(stand_ins, routes) as driver:
        time.sleep(0.3)
        assert driver.sent == {} and not driver.route_seen, "no route: no traffic"

        routes.set({"web-primary": 100, "web-canary": 0})
        wait_until(lambda: sum(driver.sent.values()) >= 40, 10, "traffic to start")
        assert set(driver.sent) == {"web-primary"} and driver.weights == {"web-primary": 100}

        routes.set({"web-primary": 0, "web-canary": 100})
        wait_until(lambda: driver.weights == {"web-canary": 100}, 5, "the driver to see the new weights")
        before = driver.sent
        wait_until(lambda: driver.sent.get("web-canary", 0) - before.get("web-canary", 0) >= 40, 10,
                   "traffic to the canary")
        assert driver.sent["web-primary"] == before["web-primary"], "nothing more to the primary"

        routes.set({"web-primary": 0, "web-canary": 0})
        wait_until(lambda: driver.weights == {}, 5, "the driver to see zero weights")
        stopped = driver.sent
        time.sleep(0.3)
        assert driver.sent == stopped, "weights summing to 0: no traffic"

        routes.set(None)
        wait_until(lambda: not driver.route_seen, 5, "the driver to see the route gone")
        assert driver.sent == stopped
    assert not driver.running
    total = sum(driver.sent.values())
    assert driver.responses == {name: {"200": n} for name, n in driver.sent.items()}, "every request completed"
    assert total >= 80


def test_driver_sends_one_percent_exactly(stand_ins):
    routes = _ScriptedRoutes()
    routes.set({"web-primary": 99, "web-canary": 1})
    with _driver(stand_ins, routes) as driver:
        wait_until(lambda: sum(driver.sent.values()) >= 250, 10, "250 requests")
    sent = driver.sent
    # Smooth WRR puts the canary's one request in the middle (the 50th) of each cycle of 100.
    total = sum(sent.values())
    assert sent.get("web-canary", 0) == (total + 50) // 100, sent


def test_requests_for_services_without_a_stand_in_are_dropped(stand_ins):
    routes = _ScriptedRoutes()
    routes.set({"web-primary": 50, "web-other": 50})
    with _driver(stand_ins, routes) as driver:
        wait_until(lambda: driver.dropped.get("web-other", 0) >= 20, 10, "requests picked for web-other")
    assert set(driver.sent) == {"web-primary"}
    assert abs(driver.sent["web-primary"] - driver.dropped["web-other"]) <= 1


def test_driver_stops_itself_after_max_duration(stand_ins):
    routes = _ScriptedRoutes()
    routes.set({"web-primary": 1})
    driver = _driver(stand_ins, routes, max_duration=0.5).start()
    wait_until(lambda: not driver.running, 5, "the driver to stop by itself")
    assert 0 < sum(driver.sent.values()) <= 0.5 * 200 + 2
    driver.stop()
