"""Operators' requests go through one transitions table; anything else is one clear line."""

import pytest
from sqlalchemy import select

from klpfleet.controller.control import request
from klpfleet.db.models import Rollout, Wave
from klpfleet.errors import UsageError
from klpfleet.registry.patches import add_patch
from klpfleet.states import ROLLOUT_TRANSITIONS, Request, RolloutStatus

from .conftest import make_ko


@pytest.fixture
def rollout_in(sqlite_db, tmp_path):
    with sqlite_db.session.begin() as s:
        patch, _ = add_patch(s, make_ko(tmp_path / "lp.ko", "lp_ctl"))
        patch_id = patch.id

    def make(status: RolloutStatus) -> int:
        with sqlite_db.session.begin() as s:
            r = Rollout(patch_id=patch_id, status=status.value, policy={}, created_by="t", current_wave=1)
            r.waves = [Wave(index=0, status="completed"), Wave(index=1, status="blocked")]
            s.add(r)
            s.flush()
            return r.id

    return make


@pytest.mark.parametrize("what", list(Request))
@pytest.mark.parametrize("status", list(RolloutStatus))
def test_every_request_from_every_status(sqlite_db, rollout_in, what, status):
    rid = rollout_in(status)
    to = ROLLOUT_TRANSITIONS.get((what, status))
    if to is None:
        with pytest.raises(UsageError, match=f"rollout {rid} is {status.value}; {what.value} needs it"):
            request(sqlite_db, rid, what)
        with sqlite_db.session() as s:
            assert s.get(Rollout, rid).status == status.value  # nothing changed
        return
    request(sqlite_db, rid, what, reason="because", full=True)
    with sqlite_db.session() as s:
        r = s.get(Rollout, rid)
        assert r.status == to.value
        if what == Request.PROMOTE:
            assert r.gate_overrides == [1] and r.promoted_full is True
            assert [w.status for w in r.waves] == ["completed", "running"]  # the blocked wave may complete
        if what == Request.PAUSE:
            assert r.pause_reason == "because"


def test_the_database_refuses_a_status_no_enum_names(sqlite_db, rollout_in):
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    rid = rollout_in(RolloutStatus.RUNNING)
    with pytest.raises(IntegrityError), sqlite_db.session.begin() as s:
        s.execute(update(Rollout).where(Rollout.id == rid).values(status="sleeping"))


def test_rollback_batches_reverse_the_waves_that_applied_the_patch(sqlite_db, tmp_path):
    from klpfleet.controller.rollback import batch_order
    from klpfleet.db.models import Host, WaveHost

    with sqlite_db.session.begin() as s:
        patch, _ = add_patch(s, make_ko(tmp_path / "lp.ko", "lp_order"))
        hosts = {n: Host(name=n, vars={}) for n in ("canary", "w2a", "w2b", "w3", "by-hand", "other")}
        s.add_all(hosts.values())
        s.flush()
        for plan in ([["canary"], ["w2a", "w2b"], ["w3"]], [["other"]]):
            r = Rollout(patch_id=patch.id, status="completed", policy={}, created_by="t")
            s.add(r)
            s.flush()
            for index, names in enumerate(plan):
                wave = Wave(rollout_id=r.id, index=index, status="completed")
                s.add(wave)
                s.flush()
                s.add_all(
                    WaveHost(wave_id=wave.id, rollout_id=r.id, host_id=hosts[n].id, status="done", outcome="applied")
                    for n in names
                )
        s.flush()
        every = set(hosts)
        assert batch_order(s, patch.id, every) == [["by-hand"], ["w3"], ["w2a", "w2b"], ["canary", "other"]]
        first = s.scalar(select(Rollout.id).order_by(Rollout.id))
        assert batch_order(s, patch.id, {"canary", "w3"}, rollout_id=first) == [["w3"], ["canary"]]
