from __future__ import annotations

from forwarder.engines.base import PrimaryInfo, Role
from forwarder.topology import Topology


def test_follows_a_new_primary_on_fly() -> None:
    topology = Topology("n2", "ams", Role.REPLICA, primary_id="n1", app_name="app", port=8080)
    topology.follow(PrimaryInfo(Role.REPLICA, "n3", known=True))
    assert topology.primary_id == "n3"
    assert topology.primary_url == "http://n3.vm.app.internal:8080"
    assert topology.replay_target() == "instance=n3"


def test_follows_with_a_url_template_off_fly() -> None:
    topology = Topology("n2", "ams", Role.REPLICA, primary_url_template="http://{id}:9000")
    topology.follow(PrimaryInfo(Role.REPLICA, "db-2"))
    assert topology.primary_url == "http://db-2:9000"


def test_an_unknown_primary_is_forgotten_not_kept() -> None:
    topology = Topology("n2", "ams", Role.REPLICA, primary_id="n1", primary_url="http://n1", primary_region="fra")
    topology.follow(PrimaryInfo(Role.REPLICA, None, known=False))
    assert topology.primary_id is None and topology.primary_url is None
    assert topology.replay_target() == "region=fra"


def test_a_static_topology_keeps_its_primary() -> None:
    topology = Topology("n2", "ams", Role.REPLICA, primary_id="n1", primary_url="http://n1")
    topology.follow(PrimaryInfo(Role.REPLICA))
    assert (topology.primary_id, topology.primary_url) == ("n1", "http://n1")


def test_becoming_primary() -> None:
    topology = Topology("n2", "ams", Role.REPLICA, primary_id="n1")
    topology.follow(PrimaryInfo(Role.PRIMARY))
    assert topology.is_primary and topology.primary_id == "n2" and topology.replay_target() == "instance=n2"
