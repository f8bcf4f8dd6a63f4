"""What ``fedq run`` says about failures while it runs, and what its report names as missing.

No failure is silent: a task whose every job raised made ``fedq run`` print ``version 0, 0
applied`` for ever (the cause only in the workers' logs), end a time budget showing the
untrained version 0 as the federated result, or wait after its target for an evaluation that
had failed. ``Verdict`` reads the regions' failure streaks (``shared.failures``) on each poll
of the run: it says each new way a region's jobs fail (one line, with the cause), says when a
region is left out, and raises ``TaskBroken`` when every region fails the same way. After the
target it tells which regions' final results will not come (``final_missing``), so the run
waits only for those that can, and ``problems`` lists what the report must say plainly.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from rq.job import Job
from rq.registry import FailedJobRegistry

from shared import failures
from shared.errors import FedqError
from shared.federation import Federation
from shared.jobs import SERIALIZER
from shared.keys import Keys
from shared.streams import CLAIMED, DETAIL, entry_text

REJECTIONS_LOOKED_AT = 1000  # the newest rejections searched for a final result's


class RunFailed(FedqError):
    """The run ended without a federated result: a broken task, or no update applied."""


class TaskBroken(RunFailed):
    """Every region's jobs of one kind fail the same way."""


class Verdict:
    """Failure streaks as ``fedq run`` sees them, said once each on its console."""

    def __init__(
        self, connection: redis.Redis, keys: Keys, fed: Federation, say: Callable[[str], None]
    ) -> None:
        self.r, self.keys, self.fed, self.say = connection, keys, fed, say
        self.limit = fed.settings.max_failures
        self._said: set[tuple[str, str, str, str]] = set()  # (region, kind, source, way)
        self._first: dict[tuple[str, str, str], str] = {}  # (kind, source, way) -> region
        self.broken: dict[tuple[str, str], failures.Failure] = {}  # ever broken in this run
        self.streaks: dict[tuple[str, str], failures.Failure] = {}  # the latest look
        self.missing: dict[str, str] = {}  # region -> why its final result will not come

    def poll(self) -> None:
        """One look at the streaks (Redis reads: the caller retries them through an outage)."""
        found = failures.read(self.r, self.keys, self.fed.regions)
        self.streaks = failures.worst(found)
        for f in sorted(found, key=lambda f: f.at):
            way = (f.region, f.kind, f.source, f.same_way)
            if way in self._said:
                continue
            self._said.add(way)
            first = self._first.setdefault(way[1:], f.region)
            if first == f.region:
                self.say(f"FAILING: {f.line()}")
            else:  # the cause was said once: a region more failing so is one short line
                self.say(
                    f"FAILING: region {f.region}: {f.kind} jobs fail the same way as "
                    f"region {first}'s ({f.count} in a row)"
                )
        task = failures.broken_task(found, self.fed.regions, self.limit)
        if task is not None:
            total = sum(f.count for f in self.streaks.values() if f.kind == task.kind)
            raise TaskBroken(
                f"the task's {task.kind} jobs fail the same way in every region ({total} "
                f"failures, none succeeded; --max-failures {self.limit}): {task.cause}"
            )
        for key, f in failures.broken(found, self.limit).items():
            if key not in self.broken:
                doing = (
                    "gets no share of the train jobs" if f.kind == "train" else "is not waited for"
                )
                self.say(
                    f"BROKEN: region {f.region}'s {f.kind} jobs failed {f.count} times in "
                    f"a row; the run carries on without it (it {doing}): {f.cause}"
                )
            self.broken[key] = f

    def final_missing(self, version: int, reported: set[str]) -> dict[str, str]:
        """Region -> why its result for the final ``version`` will not come: its evaluations are
        broken, the final evaluation job failed, or the aggregator rejected its result."""
        out: dict[str, str] = {}
        waiting = [r for r in self.fed.regions if r not in reported]
        for region in waiting:
            broken = self.broken.get((region, "evaluate"))
            if broken is not None:
                out[region] = f"its evaluations fail ({broken.count} in a row): {broken.cause}"
                continue
            failed = self._failed_job(region, version)
            if failed is not None:
                out[region] = f"its evaluation of version {version} failed: {failed}"
        if len(out) < len(waiting):
            for region, detail in self._rejected_results(version).items():
                if region in waiting and region not in out:
                    out[region] = f"its result for version {version} was rejected: {detail}"
        return out

    def _failed_job(self, region: str, version: int) -> str | None:
        prefix = f"{region}-e{version}-"
        registry = FailedJobRegistry(
            self.keys.queue(region), connection=self.r, serializer=SERIALIZER
        )
        ids = [i for i in registry.get_job_ids() if i.startswith(prefix)]
        for job in Job.fetch_many(ids, connection=self.r, serializer=SERIALIZER):
            result = job.latest_result() if job is not None else None
            if result is not None and result.exc_string:
                return result.exc_string.strip().splitlines()[-1][:300]
            if job is not None:
                return "the job failed"
        return None

    def _rejected_results(self, version: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for _id, fields in self.r.xrevrange(self.keys.rejections, count=REJECTIONS_LOOKED_AT):
            claimed = entry_text(fields, CLAIMED)
            region, _, rest = claimed.partition("-")
            if rest.startswith(f"e{version}-") and region not in out:
                out[region] = entry_text(fields, DETAIL)[:300]
        return out


def problems(
    report: dict, verdict: Verdict, missing: dict[str, str], stopped: str | None = None
) -> list[str]:
    """What the report must say plainly: why the run was ``stopped`` (a broken task: then
    nothing else but an untrained model), an untrained model, regions whose final result is
    missing (and why), regions left out of training."""
    lines = [stopped] if stopped else []
    updates = report.get("updates", {})
    if not updates.get("applied") or not report.get("versions"):
        lines.append(
            "no update was applied: the model is the untrained version "
            f"{report.get('versions') or 0}, not a federated result"
        )
    if stopped:
        return lines
    if report.get("final") is None:
        why = next(iter(sorted(missing.items())), None)
        lines.append(
            f"no region's evaluation of the final version {report.get('versions')} came: there "
            "is no result to report" + (f" ({why[0]}: {why[1]})" if why else "")
        )
    for region, why in sorted(missing.items()):
        lines.append(f"the final evaluation misses region {region}: {why}")
    for (region, kind), f in sorted(verdict.broken.items()):
        if kind == "train":
            lines.append(
                f"region {region}'s train jobs failed {f.count} times in a row and "
                f"it was left out of training: {f.cause}"
            )
    return lines
