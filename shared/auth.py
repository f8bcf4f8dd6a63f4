"""Per-region secrets and HMAC-SHA256 signatures of updates.

Each region has its own secret, held by that region's workers and by the aggregator (which
verifies). A worker signs the exact bytes it publishes (the msgpack update: header and tensors),
so an update altered in Redis, one signed with another region's secret, or one without a
signature is rejected with its reason. Secrets live in files, one per region, in
``FEDQ_KEYS`` (default ``FEDQ_HOME/keys/<namespace>``), readable by their owner only; a worker
host needs only its own region's file. ``fedq keys init`` writes them.

The same directory holds the Redis ACL users' passwords (``users/<user>.password``, one per role:
``shared.acl``) and the ACL file built from them (``users.acl``, hashes only). A fedq process
whose Redis URL carries no credentials logs in as its role's user when that user's password
file is there.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from shared.errors import FedqError
from shared.files import write_private
from shared.keys import check_name
from shared.redis_server import default_home

KEYS_ENV = "FEDQ_KEYS"


def key_dir(namespace: str) -> Path:
    return Path(os.environ.get(KEYS_ENV) or default_home() / "keys" / namespace)


def init_keys(
    directory: Path, regions: list[str] | tuple[str, ...], force: bool = False
) -> list[Path]:
    """Write a fresh 256-bit secret per region (mode 0600); existing ones are kept unless
    ``force``. Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for region in regions:
        path = directory / f"{check_name('region', region)}.key"
        if path.exists() and not force:
            continue
        write_private(path, secrets.token_hex(32) + "\n")
        written.append(path)
    return written


def init_users(
    directory: Path, namespace: str, regions: list[str] | tuple[str, ...], force: bool = False
) -> list[Path]:
    """A random password per role user (mode 0600; kept unless ``force``) and ``users.acl``."""
    from shared.acl import Users

    users_dir = directory / "users"
    users_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for user in Users(namespace).all(regions):
        path = users_dir / f"{user}.password"
        if path.exists() and not force:
            continue
        write_private(path, secrets.token_urlsafe(32) + "\n")
        written.append(path)
    write_acl(directory, namespace, regions)
    return written


def load_password(directory: Path, user: str) -> str | None:
    """The user's password from the key directory, or None if this host was not given one."""
    try:
        return (directory / "users" / f"{user}.password").read_text().strip() or None
    except FileNotFoundError:
        return None


def write_acl(directory: Path, namespace: str, regions: list[str] | tuple[str, ...]) -> Path:
    """``users.acl``: the ACL file of the namespace's users, from their password files."""
    from shared.acl import Users, acl_text
    from shared.keys import Keys

    passwords = {}
    for user in Users(namespace).all(regions):
        password = load_password(directory, user)
        if password is None:
            raise FedqError(f"no password for Redis user {user!r} in {directory / 'users'} "
                            "(run `fedq keys init`)")  # fmt: skip
        passwords[user] = password
    path = directory / ACL_FILE
    # readable by all: it holds SHA-256 hashes of random passwords only, and the Redis server
    # reading it runs as a user of its own (the redis image's `redis`)
    write_private(path, acl_text(Keys(namespace), regions, passwords), 0o644)
    return path


ACL_FILE = "users.acl"


def load_key(directory: Path, region: str) -> bytes:
    path = directory / f"{check_name('region', region)}.key"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise FedqError(
            f"no secret for region {region!r} at {path} (run `fedq keys init`)"
        ) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise FedqError(f"{path}: not a hex secret") from None
    if len(key) < 16:
        raise FedqError(f"{path}: a secret of {len(key)} bytes is too short (want 32)")
    return key


def load_keys(directory: Path, regions: tuple[str, ...]) -> dict[str, bytes]:
    return {region: load_key(directory, region) for region in regions}


def sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def verify(key: bytes, payload: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, payload), signature)
