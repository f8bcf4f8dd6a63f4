"""The aggregator's commit: one new version of the model, written atomically or not at all.

The Lua script below is the only code that moves the model forward. The blob is staged first
(outside the script, so it is not copied through Lua), then the script checks the lease and the
version, renames the staged blob into place, writes the version's info, bumps the counter,
records the applied update ids and one attempt per job, acknowledges and deletes their stream
entries, appends the applies entry (read back by ``shared.streams.applied_updates``) and drops
the version that left the window unless an evaluation pins it, and writes the guard's
records of the regions it judged.
"""

from __future__ import annotations

import json
import time

import redis

from coordinator.strategies import Outcome
from shared import streams
from shared.codec import Model, encode_model
from shared.faults import crash_point
from shared.keys import AGGREGATOR_GROUP, Keys
from shared.lease import LostLease

# Atomic: check the version is still ours, then move the staged blob into place, write the new
# version's info, bump the counter, record the applied ids, acknowledge and delete their stream
# entries, add the applies entry and drop the version that left the window. Returns 0 (and
# writes nothing but the staged blob's removal) if the version moved, which only a second
# aggregator could do. The blob is staged just before, in the same round trip, under a key of
# this aggregator's own with an expiry: a crash between the two leaves nothing a restarted
# aggregator could mistake for the new version.
COMMIT_SCRIPT = """
local version, info, applied, applies, old, staged, model, applied_jobs, lease, pinned, guard =
  unpack(KEYS)
local holder = ARGV[#ARGV]  -- this aggregator's lease value ('' when it runs without one)
if holder ~= '' and redis.call('GET', lease) ~= holder then
  redis.call('DEL', staged)
  return -1
end
if tonumber(redis.call('GET', version)) ~= tonumber(ARGV[1]) then
  redis.call('DEL', staged)
  return 0
end
redis.call('RENAME', staged, model)
redis.call('PERSIST', model)
local i = 5
local function take(n)
  local out = {}
  for k = 1, n do out[k] = ARGV[i + k] end
  i = i + n
  return out
end
local n_ids = tonumber(ARGV[i]); local ids = take(n_ids); local jobs = take(n_ids)
i = i + 1; local n_entries = tonumber(ARGV[i]); local entries = take(n_entries)
i = i + 1; local n_info = tonumber(ARGV[i]); local info_pairs = take(2 * n_info)
i = i + 1; local n_applies = tonumber(ARGV[i]); local applies_pairs = take(2 * n_applies)
i = i + 1; local n_guard = tonumber(ARGV[i]); local guard_pairs = take(2 * n_guard)
redis.call('HSET', info, unpack(info_pairs))
redis.call('SET', version, ARGV[2])
-- the version leaving the window goes, unless an evaluation scheduled for it is not done yet
if tonumber(ARGV[4]) >= 0 and redis.call('HEXISTS', pinned, ARGV[4]) == 0 then
  redis.call('DEL', old)
end
redis.call('SADD', applied, unpack(ids))
for k = 1, n_ids do redis.call('HSET', applied_jobs, jobs[k], ids[k]) end  -- one attempt a job
for k = 1, n_entries, 2 do  -- (stream, entry id) pairs: one batch may span regions
  redis.call('XACK', entries[k], ARGV[3], entries[k + 1])
  redis.call('XDEL', entries[k], entries[k + 1])
end
redis.call('XADD', applies, 'MAXLEN', '~', '1000000', '*', unpack(applies_pairs))
if n_guard > 0 then redis.call('HSET', guard, unpack(guard_pairs)) end
return 1
"""


class StaleWriter(LostLease):
    """Another aggregator wrote the model: this one's view is out of date (never the entry's
    fault, so it is not turned into a rejection)."""


STAGED_TTL = 3600  # seconds a staged blob outlives a crash between staging and commit


class Committer:
    """Writes an outcome's new version for one aggregator (its consumer name stages blobs)."""

    def __init__(self, connection: redis.Redis, keys: Keys, consumer: str, window: int) -> None:
        self.r, self.keys, self.consumer, self.window = connection, keys, consumer, window
        self._script = connection.register_script(COMMIT_SCRIPT)

    def commit(self, version: int, outcome: Outcome, mode: str, lease_value: str) -> None:
        """Version ``version + 1`` from ``outcome``; StaleWriter if the lease or the version
        moved under this aggregator (then nothing but the staged blob's removal was written)."""
        new_version = version + 1
        ids = [p.update_id for p in outcome.applied]
        jobs = [p.update.header.job_id for p in outcome.applied]
        entries = [part for p in outcome.applied for part in streams.split_ref(p.entry_id)]
        regions = sorted({p.update.header.region for p in outcome.applied})
        now = f"{time.time():.3f}"
        extra = {k: str(v) for k, v in outcome.info.items()}
        info = {"created_at": now, "mode": mode, "updates": ",".join(ids),
                "regions": ",".join(regions), **extra}  # fmt: skip
        applies = {"version": new_version, "at": now, "updates": json.dumps([
            {"id": p.update_id, "region": p.update.header.region,
             "base": p.update.header.base_version, "n": p.update.header.n_samples,
             "loss": round(p.update.header.train_loss, 5),
             **({"guard": p.guard} if p.guard else {})} for p in outcome.applied]),
            **extra}  # fmt: skip
        old = new_version - self.window
        blob = encode_model(Model(new_version, outcome.new_weights, {}))
        staged = self.keys.staged_model(new_version, self.consumer)
        crash_point("aggregator.before_commit")
        script_keys = [
            self.keys.version, self.keys.model_info(new_version), self.keys.applied,
            self.keys.applies, self.keys.model(old) if old >= 0 else self.keys.model(-1),
            staged, self.keys.model(new_version), self.keys.applied_jobs,
            self.keys.lease("aggregator"), self.keys.pinned, self.keys.guard,
        ]  # fmt: skip
        script_args = [
            version, new_version, AGGREGATOR_GROUP, old if old >= 0 else -1,
            len(ids), *ids, *jobs, len(entries), *entries,
            len(info), *streams.flat(info), len(applies), *streams.flat(applies),
            len(outcome.guard), *streams.flat(outcome.guard), lease_value,
        ]  # fmt: skip
        done = self._stage_and_run(staged, blob, script_keys, script_args)
        crash_point("aggregator.after_commit")
        if done == -1:
            raise StaleWriter("this aggregator lost its lease: another one is active")
        if not done:
            current = self.r.get(self.keys.version)
            raise StaleWriter(
                f"the model version moved to {current!r} under this aggregator "
                f"(expected {version}): is a second aggregator writing?"
            )

    def _stage_and_run(self, staged: str, blob: bytes, keys: list, args: list) -> object:
        """The staged blob and the script in one round trip: EVALSHA straight in the pipeline,
        not a Script object, whose pipeline first asks SCRIPT EXISTS in a round trip of its own
        on every commit. If Redis lost its script cache (a restart, SCRIPT FLUSH), the script
        ran nowhere: load it and send both again (the SET is idempotent)."""
        for attempt in (1, 2):
            with self.r.pipeline(transaction=False) as pipe:
                pipe.set(staged, blob, ex=STAGED_TTL)
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                try:
                    return pipe.execute()[1]
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
                    self.r.script_load(COMMIT_SCRIPT)
        raise AssertionError("unreachable")
