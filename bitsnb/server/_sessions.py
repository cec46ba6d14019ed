"""Upload sessions kept on disk, so a server restart keeps them and their received bytes.

Layout: ``root/.bits-sessions/<guid>/state.json`` (small JSON, replaced atomically),
``.../data`` (the bytes received so far, contiguous from offset 0) and ``.../reply`` (the reply
body, upload-reply only). A session is ``open`` while bytes arrive, ``complete`` once the whole
file was moved to its destination, and ``closed`` after Close-Session (kept only to serve the reply
until it expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bitsnb.server._protocol import (
    E_ACCESSDENIED,
    E_INVALIDARG,
    STATE_DIR,
    Refused,
    format_session_id,
)

__all__ = ["Session", "SessionLocks", "SessionStore", "resolve_destination"]

SessionState = Literal["open", "complete", "closed"]
_STATE_FILE = "state.json"
_DATA_FILE = "data"
_REPLY_FILE = "reply"


def resolve_destination(root: Path, segments: tuple[str, ...]) -> Path:
    """``root/segments`` after checking that symbolic links do not lead out of root.

    ``root`` must already be resolved. Refuses a destination that is a folder, or below a file.
    """
    dest = root.joinpath(*segments)
    real = Path(os.path.realpath(dest))
    if not real.is_relative_to(root) or real == root:
        raise Refused(403, E_ACCESSDENIED, "the destination leads out of the upload root")
    if real.is_relative_to(root / STATE_DIR):
        raise Refused(403, E_ACCESSDENIED, "the server's state folder is not writable")
    if real.is_dir():
        raise Refused(400, E_INVALIDARG, "the URL names a folder, not a file")
    for parent in real.parents:
        if parent == root:
            break
        if parent.exists() and not parent.is_dir():
            raise Refused(400, E_INVALIDARG, "a parent of the destination is a file")
    return dest


@dataclass
class Session:
    """One upload session's persistent state."""

    id: uuid.UUID
    path: str  # destination relative to root, "/"-separated
    created: float
    updated: float  # last activity; the session expires session_timeout seconds after it
    total: int | None = None
    received: int = 0  # bytes held contiguously from offset 0 (= next byte expected)
    state: SessionState = "open"
    reply: bool = False  # a reply body is stored
    reply_type: str = "application/octet-stream"
    client: str = ""  # who made it: "user:NAME" when authenticated, else "ip:ADDRESS"
    folder: Path = field(default=Path(), compare=False)

    @property
    def header_id(self) -> str:
        """The id as sent in ``BITS-Session-Id``."""
        return format_session_id(self.id)

    @property
    def data_path(self) -> Path:
        """The bytes received so far."""
        return self.folder / _DATA_FILE

    @property
    def reply_path(self) -> Path:
        """The reply body (upload-reply)."""
        return self.folder / _REPLY_FILE

    def to_json(self) -> dict[str, Any]:
        """What ``state.json`` holds."""
        data = asdict(self)
        data["id"] = str(self.id)
        del data["folder"]
        return data


class SessionStore:
    """Sessions under ``root/.bits-sessions``; all methods are synchronous and cheap.

    An in-memory index (session id → client and bytes reserved) answers the caps without
    listing the folder. It is read from disk once, by ``ensure_index`` (the app calls it on a
    worker thread: thousands of session folders must not stall the event loop), and then kept
    by ``create``/``save``/``remove``/``expire``. Expiry runs on a worker thread while requests
    are handled on the loop, so the index has a lock of its own.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / STATE_DIR
        self._lock = threading.Lock()
        self._build = threading.Lock()
        self._index: dict[uuid.UUID, tuple[str, int]] = {}
        self._indexed = False

    @property
    def indexed(self) -> bool:
        """True once ``ensure_index`` has read the sessions on disk."""
        return self._indexed

    def ensure_index(self) -> None:
        """Read every session on disk into the index, once (blocking: call it off the loop)."""
        if self._indexed:
            return
        with self._build:
            if self._indexed:
                return
            found: dict[uuid.UUID, tuple[str, int]] = {}
            for session_id in self.session_ids():
                session = self.load(session_id)
                # half-made or unreadable ones count too, until expiry removes them
                found[session_id] = (session.client, _reserved(session)) if session else ("", 0)
            with self._lock:
                found.update(self._index)  # saved meanwhile: the newer entry wins
                self._index = {k: v for k, v in found.items() if self._folder(k).exists()}
                self._indexed = True

    def _folder(self, session_id: uuid.UUID) -> Path:
        return self.folder / str(session_id)

    def count(self, client: str | None = None) -> int:
        """Sessions on disk (those of *client* only, when given)."""
        with self._lock:
            if client is None:
                return len(self._index)
            return sum(1 for who, _ in self._index.values() if who == client)

    def held_bytes(self) -> int:
        """Bytes reserved by open sessions: the declared totals of uploads not yet complete."""
        with self._lock:
            return sum(held for _, held in self._index.values())

    def create(self, path: str, now: float, client: str = "") -> Session:
        """A new open session with an empty data file."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        session_id = uuid.uuid4()
        folder = self._folder(session_id)
        folder.mkdir(mode=0o700)
        session = Session(session_id, path, now, now, client=client, folder=folder)
        session.data_path.touch()
        self.save(session)
        return session

    def save(self, session: Session) -> None:
        """Write ``state.json`` atomically (temp file + ``os.replace``)."""
        tmp = session.folder / (_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(session.to_json()), encoding="utf-8")
        os.replace(tmp, session.folder / _STATE_FILE)
        with self._lock:
            self._index[session.id] = (session.client, _reserved(session))

    def _forget(self, session_id: uuid.UUID) -> None:
        with self._lock:
            self._index.pop(session_id, None)

    def load(self, session_id: uuid.UUID) -> Session | None:
        """The stored session, or None (unknown, removed or unreadable)."""
        folder = self._folder(session_id)
        try:
            raw = json.loads(_read_regular(folder / _STATE_FILE))
            session = Session(
                id=uuid.UUID(raw["id"]),
                path=str(raw["path"]),
                created=float(raw["created"]),
                updated=float(raw["updated"]),
                total=None if raw.get("total") is None else int(raw["total"]),
                received=int(raw.get("received", 0)),
                state=raw.get("state", "open"),
                reply=bool(raw.get("reply", False)),
                reply_type=str(raw.get("reply_type", "application/octet-stream")),
                client=str(raw.get("client", "")),
                folder=folder,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if session.id != session_id or session.state not in ("open", "complete", "closed"):
            return None
        if session.state == "open":
            # The JSON is written after the data, so the data file may be longer, never shorter
            # unless something outside removed bytes: trust the smaller of the two.
            try:
                size = session.data_path.stat().st_size
            except OSError:
                size = 0
            session.received = min(session.received, size)
        return session

    def remove(self, session: Session) -> None:
        """Delete the session's folder (data, reply and state)."""
        shutil.rmtree(session.folder, ignore_errors=True)
        self._forget(session.id)

    def drop_data(self, session: Session) -> None:
        """Delete the data file only (after the file went to its destination)."""
        with contextlib.suppress(OSError):
            session.data_path.unlink()

    def session_ids(self) -> list[uuid.UUID]:
        """Ids of the sessions on disk (folders whose name is a GUID)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        ids: list[uuid.UUID] = []
        for name in names:
            with contextlib.suppress(ValueError):
                ids.append(uuid.UUID(name))
        return ids

    def expire(self, now: float, timeout: float, busy: Callable[[], AbstractSet[uuid.UUID]]) -> int:
        """Remove sessions idle for more than ``timeout`` seconds (not those ``busy()`` names,
        asked again for each session: this runs on a worker thread while packets arrive).
        Builds the index first when it is not built yet."""
        self.ensure_index()
        removed = 0
        for session_id in self.session_ids():
            if session_id in busy():
                continue
            session = self.load(session_id)
            if session is None:
                # Unreadable state: judge by the folder's age, so a half-created one goes too.
                folder = self._folder(session_id)
                try:
                    stamp = folder.stat().st_mtime
                except OSError:
                    continue
                if now - stamp > timeout and session_id not in busy():
                    shutil.rmtree(folder, ignore_errors=True)
                    self._forget(session_id)
                    removed += 1
                continue
            if now - session.updated > timeout and session_id not in busy():
                self.remove(session)
                removed += 1
        return removed

    @staticmethod
    def now() -> float:
        """Wall-clock time, as stored in ``state.json``."""
        return time.time()


def _reserved(session: Session) -> int:
    """Bytes an open session may still put on disk: its declared total (0 once complete)."""
    return session.total or 0 if session.state == "open" else 0


def _read_regular(path: Path) -> str:
    """The text of *path* if it is a regular file; a FIFO, device or link planted in the state
    folder is refused (OSError) without blocking: opening a FIFO would wait for a writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read().decode("utf-8")
    finally:
        os.close(fd)


class SessionLocks:
    """One asyncio.Lock per session id (strictly one packet per session at a time).

    ``busy()`` is also asked from the expiry thread, so the table has a thread lock too.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, int]] = {}
        self._guard = threading.Lock()

    def busy(self) -> set[uuid.UUID]:
        """Sessions with a packet being handled or waiting (safe from any thread)."""
        with self._guard:
            return set(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the session's lock for the body of the ``async with``."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if loop is not self._loop:  # the app was handed to a new server/loop
                self._loop, self._locks = loop, {}
            lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
            self._locks[session_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[session_id]
                if users <= 1:
                    del self._locks[session_id]
                else:
                    self._locks[session_id] = (lock, users - 1)
