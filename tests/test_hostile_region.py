"""A hostile region with valid credentials, live: ``fedq run``'s federation (its own Redis, ACL
users, signed updates, every role a process) where cn's worker is fedq's real worker whose
task lies (``harness.hostile``). Its poisoned updates pass every protocol check; the guard
refuses them by direction, flags cn, and the honest regions' training goes on."""

from __future__ import annotations

import json
import sys

from coordinator.guard import region_view
from harness.audit import audit
from harness.run import RunOptions, run_federation
from shared.keys import Keys
from shared.settings import FederationSettings


def test_a_region_that_sends_negated_updates_is_refused_and_flagged(wide_toy_data, tmp_path):
    def placement(kind: str, region: str | None) -> list[str]:
        if kind == "worker" and region == "cn":
            return [sys.executable, "-m", "harness.hostile", "negate", "--"]
        return []

    settings = FederationSettings(
        task="toy", target_versions=60, eval_every=0, signed_updates=True, max_inflight=2
    )
    seen: dict = {}

    def finished(connection) -> None:
        keys = Keys("fedq")
        seen["audit"] = audit(connection, keys)
        seen["rejected"] = {
            k.decode(): v.decode() for k, v in connection.hgetall(keys.rejected).items()
        }
        seen["guard"] = {r: region_view(connection.hget(keys.guard, r)) for r in ("cn", "us")}
        seen["applied"] = [json.loads(f[b"updates"]) for _, f in connection.xrange(keys.applies)]

    options = RunOptions(
        wide_toy_data, settings, workers_per_region=1, out_dir=tmp_path / "run", acl=True,
        placement=placement,
    )  # fmt: skip
    report = run_federation(options, lambda _m: None, lambda _s: None, on_finish=finished)
    assert report["versions"] >= 60
    refused = [u for u in seen["rejected"] if u.startswith("cn-")]
    # refused for pointing against the others, or, once its suspicion passed 0.8, for that
    assert refused and {seen["rejected"][u] for u in refused} <= {"direction", "suspected"}
    assert "direction" in {seen["rejected"][u] for u in refused}
    # what cn got applied was scaled to the regions' norm and down-weighted, every update
    cn_applied = [u for updates in seen["applied"] for u in updates if u["region"] == "cn"]
    assert all(u.get("guard") for u in cn_applied)
    # the toy model converges within these versions: its honest updates are then mostly noise,
    # and one may point away from the trajectory together with its region's recent ones
    honest = [u for u in seen["rejected"] if not u.startswith("cn-")]
    assert len(honest) <= 0.05 * report["updates"]["applied"]
    assert seen["guard"]["cn"]["flagged"] and not seen["guard"]["us"]["flagged"]
    applied_regions = {u["region"] for updates in seen["applied"] for u in updates}
    assert {"us", "eu", "in", "jp", "me"} <= applied_regions
    assert seen["audit"].ok, seen["audit"].problems
