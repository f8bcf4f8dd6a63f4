"""One active instance per role and namespace: a lease in Redis with a fencing token.

Any number of ``fedq aggregator`` and ``fedq coordinator`` processes may run; one of each holds
its role's lease (``Keys.lease``: ``"<token> <holder>"`` with a TTL, renewed from a thread) and
works, the others are hot standbys that poll and take over within a TTL and a poll of the
active one's death. The token comes from a counter (``Keys.fence``) and grows with every new
holder, so a paused ex-active (a GC pause, SIGSTOP, a partition) cannot write once a successor
holds the lease: its writes go through ``FencedBatch`` or a script that first compares the
lease with its own value (Kleppmann, "How to do distributed locking").
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import redis

from shared.errors import FedqError
from shared.keys import Keys

DEFAULT_TTL = 5.0  # seconds; a standby takes over within this plus one poll
POLL = 0.5  # seconds between a standby's attempts

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, -string.len(ARGV[1]) - 1) == ' ' .. ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return current
  end
  return false
end
local value = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# the lease check, then a batch of commands (each: its length, then its words): a fenced write
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


class LostLease(FedqError):
    """This process's lease has another holder now: it must stop writing and stand by."""


def holder_name(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lease:
    """A role's lease as seen by one process: acquire, renew (a thread), release."""

    def __init__(
        self, connection: redis.Redis, keys: Keys, role: str, holder: str | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> None:  # fmt: skip
        self.r = connection
        self.key, self.fence_key = keys.lease(role), keys.fence(role)
        self.role = role
        self.holder = holder or holder_name(role)
        self.ttl_ms = int(ttl * 1000)
        self.value: str | None = None  # "<token> <holder>" while held
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> int | None:
        return int(self.value.split(" ", 1)[0]) if self.value else None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (or this process already does)."""
        got = self.r.eval(_ACQUIRE, 2, self.key, self.fence_key, self.holder, self.ttl_ms)
        self.value = got.decode() if got else None
        if self.value:
            self.lost.clear()
        return self.value is not None

    def current_holder(self) -> str | None:
        raw = self.r.get(self.key)
        return raw.decode().split(" ", 1)[1] if raw else None

    def renew(self) -> bool:
        if self.value is None:
            return False
        if self.r.eval(_RENEW, 1, self.key, self.value, self.ttl_ms):
            return True
        self.value = None
        self.lost.set()
        return False

    def keep_renewing(self) -> None:
        """Renew three times per TTL from a thread; on a failed renewal ``lost`` is set (a
        Redis outage longer than the TTL loses the lease too: a successor may have it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.ttl_ms / 3000):
                try:
                    if not self.renew():
                        return
                except redis.RedisError:
                    continue  # the next beat retries; the TTL decides
            # stopped on purpose: nothing to do

        self._thread = threading.Thread(target=loop, name=f"fedq-lease-{self.role}", daemon=True)
        self._thread.start()

    def hold(self, should_stop, say=None, poll: float = POLL) -> bool:
        """Block until this process is the active one (True) or ``should_stop`` (False),
        standing by meanwhile: one line when it starts standing by, one when it takes over.
        Redis errors propagate (the caller rides outages out)."""
        waited = False
        while not should_stop():
            if self.acquire():
                if say is not None:
                    took = f" (took over after standing by; fencing token {self.token})"
                    say(f"{self.role}: active{took if waited else f', fencing token {self.token}'}")
                self.keep_renewing()
                return True
            if not waited and say is not None:
                say(f"{self.role}: standby, {self.current_holder() or 'another'} is active")
            waited = True
            time.sleep(poll)
        return False

    def check(self) -> None:
        """Raise LostLease unless this process holds the lease (as far as it knows)."""
        if self.value is None or self.lost.is_set():
            raise LostLease(f"the {self.role} lease is no longer this process's")

    def release(self) -> None:
        """Give the lease up (a clean stop: a standby takes over at once)."""
        self._stop.set()
        if self.value is not None:
            try:
                self.r.eval(_RELEASE, 1, self.key, self.value)
            except redis.RedisError:
                pass  # it expires by itself
        self.value = None


class FencedBatch:
    """Commands that run only while ``lease`` is still this process's: one script, atomic."""

    def __init__(self) -> None:
        self.commands: list[tuple] = []

    def add(self, *command: str | bytes | int | float) -> FencedBatch:
        self.commands.append(command)
        return self

    def execute(self, connection: redis.Redis, lease: Lease | None) -> bool:
        """True if it ran; False if the lease has another holder (nothing was written).
        Without a lease (one instance by construction: tests, tools) it is a transaction."""
        if lease is None:
            with connection.pipeline(transaction=True) as pipe:
                for command in self.commands:
                    pipe.execute_command(*command)
                pipe.execute()
            return True
        if lease.value is None:
            return False  # lost already: nothing is sent
        args = [word for command in self.commands for word in (len(command), *command)]
        return bool(connection.eval(_FENCED, 1, lease.key, lease.value, *args))
