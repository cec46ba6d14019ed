"""Parity: the blocking ``Job``/``Manager`` and the asyncio ``AsyncJob``/``AsyncManager`` offer the
same calls (issue 12, item 11).

Every public member of one class exists on the other with the same parameters (names, kinds,
defaults, by ``inspect.signature``; annotations may differ, ``Job`` vs ``AsyncJob``). The async
side's calls are coroutine functions and the blocking side's are not, except the reads listed in
``PLAIN_ON_BOTH`` (plain on both sides: they never wait) and the calls in ``AWAITABLE_ON_BOTH``
(coroutines on both sides: ``await job.wait_async()`` from a notebook cell). Constructors are
plain on both sides. A settable property ``x`` of the blocking
class stands for a read property ``x`` and an ``async def set_x(value)`` on the async class; the
setter's value parameter and ``set_x``'s one parameter agree in kind and annotation.

Differences by design are allowlisted below, each with its reason. The Windows-only BITS calls
that ``Job`` serves through ``__getattr__`` (``bitsnb._syncbridge.WINDOWS_ONLY``) count as present.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import bitsnb
from bitsnb import _codes, _syncbridge

#: Members only the blocking Job has.
JOB_ONLY: dict[str, str] = {
    "async_job": "the handle on the AsyncJob behind a blocking Job; the async job is that job",
    "files_frame": "notebook hook (pandas), part of the blocking notebook API",
    "panel": "notebook hook (ipywidgets), part of the blocking notebook API",
}
#: Members only the AsyncJob has (none: every async call is reachable from the blocking Job).
ASYNC_JOB_ONLY: dict[str, str] = {}

#: Members only the blocking Manager has.
MANAGER_ONLY: dict[str, str] = {
    "async_manager": "the handle on the AsyncManager behind a blocking Manager",
    "loop": "the loop thread a blocking Manager owns; an AsyncManager runs on its caller's loop",
    "panel": "notebook hook (ipywidgets), part of the blocking notebook API",
}
#: Members only the AsyncManager has.
ASYNC_MANAGER_ONLY: dict[str, str] = {
    "start": "an AsyncManager is opened by await start() or async with; Manager() opens itself",
}
#: The blocking name -> the async one, where the two differ by the asyncio convention.
MANAGER_PAIRS: dict[str, str] = {
    "__init__": "__init__",
    "close": "aclose",
    "__enter__": "__aenter__",
    "__exit__": "__aexit__",
}

#: Blocking-side calls that are coroutine functions on purpose (both sides await them).
AWAITABLE_ON_BOTH: dict[str, str] = {
    "wait_async": "awaits a blocking Job from another running loop (a notebook cell)",
}

#: Async-side calls that are plain functions: they read memory and never wait.
PLAIN_ON_BOTH: dict[str, str] = {
    "enum_files": "a snapshot of the files in memory",
    "get_error": "the job's last error, in memory",
    "get_reply_data": "the reply already on disk or in memory (≤1 MB)",
    "subscribe": "adds a listener; nothing to wait for",
}


_NONE: Mapping[str, str] = MappingProxyType({})  # an empty allowlist, read only


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One public member of a class as the comparison sees it."""

    name: str
    kind: str  # "method", "coroutine", "property" or "attribute" (an instance's own)
    signature: inspect.Signature | None = None  # without self; for methods and coroutines
    setter: inspect.Parameter | None = None  # a settable property's value parameter

    @property
    def is_data(self) -> bool:
        return self.kind in {"property", "attribute"}


def _without_self(fn: Any) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def members_of(
    cls: type, instance: object | None = None, dunders: Iterable[str] = ()
) -> dict[str, Member]:
    """The public members of *cls* (plus the listed dunders), and *instance*'s own attributes."""
    names = {n for n in dir(cls) if not n.startswith("_")} | set(dunders)
    found: dict[str, Member] = {}
    for name in sorted(names):
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            setter = None
            if raw.fset is not None:
                setter = list(inspect.signature(raw.fset).parameters.values())[1]
            found[name] = Member(name, "property", setter=setter)
        elif inspect.isfunction(raw):
            kind = "coroutine" if inspect.iscoroutinefunction(raw) else "method"
            found[name] = Member(name, kind, _without_self(raw))
        else:
            found[name] = Member(name, "attribute")
    if instance is not None:
        for name in vars(instance):
            if not name.startswith("_"):
                found.setdefault(name, Member(name, "attribute"))
    return found


def _params(sig: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _annotation(p: inspect.Parameter) -> str:
    a = p.annotation
    return a if isinstance(a, str) else inspect.formatannotation(a)


def compare(
    blocking: Mapping[str, Member],
    asynchronous: Mapping[str, Member],
    *,
    names: tuple[str, str],
    blocking_only: Mapping[str, str] = _NONE,
    async_only: Mapping[str, str] = _NONE,
    pairs: Mapping[str, str] = _NONE,
    plain: Mapping[str, str] = _NONE,
    awaitable: Mapping[str, str] = _NONE,
    served: Iterable[str] = (),
) -> list[str]:
    """Every difference between the two member sets, one message each."""
    b_name, a_name = names
    served = set(served)
    back = {v: k for k, v in pairs.items()}
    out: list[str] = []
    covered: set[str] = set()  # async names some blocking member accounts for

    for name, b in blocking.items():
        if name in blocking_only:
            continue
        other = pairs.get(name, name)
        a = asynchronous.get(other)
        covered.add(other)
        if b.kind == "coroutine" and name not in awaitable:
            out.append(f"{b_name}.{name} is a coroutine function; the blocking API's calls block")
        if b.setter is not None:
            set_name = f"set_{name}"
            covered.add(set_name)
            setter = asynchronous.get(set_name)
            if setter is None or setter.kind != "coroutine" or setter.signature is None:
                out.append(
                    f"{b_name}.{name} is settable but {a_name} has no coroutine {set_name}(value)"
                )
            else:
                params = list(setter.signature.parameters.values())
                if (
                    len(params) != 1
                    or params[0].kind != b.setter.kind
                    or params[0].default is not inspect.Parameter.empty
                    or _annotation(params[0]) != _annotation(b.setter)
                ):
                    out.append(
                        f"{b_name}.{name} = ({b.setter}) does not match "
                        f"{a_name}.{set_name}{setter.signature}"
                    )
        if a is None:
            out.append(f"{b_name}.{name} has no counterpart {a_name}.{other}")
            continue
        if b.is_data or a.is_data:
            if not (b.is_data and a.is_data):
                out.append(f"{b_name}.{name} is a {b.kind}, {a_name}.{other} a {a.kind}")
            continue
        if a.kind == "method" and other not in plain and other != "__init__":
            out.append(f"{a_name}.{other} is not a coroutine function")
        if a.kind == "coroutine" and other in plain:
            out.append(f"{a_name}.{other} is a coroutine function, listed as a plain read")
        assert a.signature is not None and b.signature is not None
        if _params(a.signature) != _params(b.signature):
            out.append(f"{b_name}.{name}{b.signature} differs from {a_name}.{other}{a.signature}")

    for name, a in asynchronous.items():
        if name in covered or name in async_only:
            continue
        if name in served and back.get(name, name) not in blocking:
            if a.kind != "coroutine":
                out.append(f"{a_name}.{name} (served by {b_name}.__getattr__) is not a coroutine")
            continue
        out.append(f"{a_name}.{name} has no counterpart on {b_name}")
    return out


def _report(title: str, messages: list[str]) -> str:
    return f"{title} ({len(messages)}):\n" + "\n".join(messages)


# -- the tests on bitsnb -----------------------------------------------------------------------
def test_job_and_async_job_stay_in_step(manager: bitsnb.Manager) -> None:
    job = manager.create_job("parity")
    blocking, asynchronous = members_of(bitsnb.Job, job), members_of(bitsnb.AsyncJob, job.async_job)
    assert {"resume", "priority", "add_file_with_ranges"} <= blocking.keys() & asynchronous.keys()
    found = compare(
        blocking,
        asynchronous,
        names=("Job", "AsyncJob"),
        blocking_only=JOB_ONLY,
        async_only=ASYNC_JOB_ONLY,
        plain=PLAIN_ON_BOTH,
        awaitable=AWAITABLE_ON_BOTH,
        served=_syncbridge.WINDOWS_ONLY,
    )
    if found:
        pytest.fail(_report("Job and AsyncJob differ", found), pytrace=False)


def test_manager_and_async_manager_stay_in_step(manager: bitsnb.Manager, tmp_path: Path) -> None:
    unopened = bitsnb.AsyncManager(tmp_path / "other.db")  # its attributes; nothing is opened
    blocking = members_of(bitsnb.Manager, manager, dunders=MANAGER_PAIRS)
    asynchronous = members_of(bitsnb.AsyncManager, unopened, dunders=MANAGER_PAIRS.values())
    assert {"create_job", "policy", "store_path"} <= blocking.keys() & asynchronous.keys()
    found = compare(
        blocking,
        asynchronous,
        names=("Manager", "AsyncManager"),
        blocking_only=MANAGER_ONLY,
        async_only=ASYNC_MANAGER_ONLY,
        pairs=MANAGER_PAIRS,
        plain=PLAIN_ON_BOTH,
    )
    if found:
        pytest.fail(_report("Manager and AsyncManager differ", found), pytrace=False)


def test_windows_only_calls_are_served_and_refused(manager: bitsnb.Manager) -> None:
    """The names Job serves through __getattr__ are not on the class, exist as coroutines on
    AsyncJob, and reach it: each raises E_NOTIMPL."""
    job = manager.create_job("windows")
    for name in sorted(_syncbridge.WINDOWS_ONLY):
        assert not hasattr(bitsnb.Job, name), name
        assert inspect.iscoroutinefunction(getattr(bitsnb.AsyncJob, name)), name
    with pytest.raises(bitsnb.BitsError) as info:
        job.set_peer_caching_flags(0)
    assert info.value.code == _codes.E_NOTIMPL


def test_allowlisted_names_exist() -> None:
    """An allowlist entry whose member is gone is stale: remove it."""
    stale = [
        f"{cls.__name__}.{name}"
        for cls, names in (
            (bitsnb.Job, JOB_ONLY),
            (bitsnb.AsyncJob, ASYNC_JOB_ONLY),
            (bitsnb.Manager, MANAGER_ONLY),
            (bitsnb.AsyncManager, ASYNC_MANAGER_ONLY),
        )
        for name in names
        if not hasattr(cls, name)
    ]
    stale += [f"Job.{n}" for n in AWAITABLE_ON_BOTH if not hasattr(bitsnb.Job, n)]
    stale += [
        f"PLAIN_ON_BOTH: {n}"
        for n in PLAIN_ON_BOTH
        if not (hasattr(bitsnb.AsyncJob, n) or hasattr(bitsnb.AsyncManager, n))
    ]
    assert not stale


# -- the comparison on made-up classes ---------------------------------------------------------
class _Blocking:
    def __init__(self) -> None:
        self.size = 1
        self._hidden = 2

    @property
    def name(self) -> str:
        return ""

    @name.setter
    def name(self, value: str) -> None:
        pass

    @property
    def state(self) -> int:
        return 0

    def go(self, a: int, *, b: int = 1) -> None:
        pass

    def read(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name == "windows_call":
            return lambda: None
        raise AttributeError(name)


class _Async:
    def __init__(self) -> None:
        self.size = 1

    @property
    def name(self) -> str:
        return ""

    async def set_name(self, name: str) -> None:
        pass

    @property
    def state(self) -> int:
        return 0

    async def go(self, a: int, *, b: int = 1) -> None:
        pass

    def read(self) -> int:
        return 0

    async def aclose(self) -> None:
        pass

    async def windows_call(self) -> None:
        pass


def _compare(blocking: dict[str, Member], asynchronous: dict[str, Member]) -> list[str]:
    return compare(
        blocking,
        asynchronous,
        names=("B", "A"),
        pairs={"close": "aclose"},
        plain={"read": "reads"},
        awaitable={"go_async": "awaited on both sides"},
        served={"windows_call"},
    )


def _toy() -> tuple[dict[str, Member], dict[str, Member]]:
    return members_of(_Blocking, _Blocking()), members_of(_Async, _Async())


def test_members_of_sees_properties_setters_methods_and_attributes() -> None:
    b, a = _toy()
    assert sorted(b) == ["close", "go", "name", "read", "size", "state"]
    assert b["name"].setter is not None and b["name"].setter.annotation == "str"
    assert b["state"].kind == "property" and b["state"].setter is None
    assert (b["size"].kind, a["go"].kind, b["go"].kind) == ("attribute", "coroutine", "method")
    assert str(b["go"].signature) == "(a: 'int', *, b: 'int' = 1) -> 'None'"


def test_compare_accepts_classes_in_step() -> None:
    assert _compare(*_toy()) == []


def test_compare_reports_a_missing_member_on_either_side() -> None:
    b, a = _toy()
    del b["state"], a["go"]
    assert _compare(b, a) == ["B.go has no counterpart A.go", "A.state has no counterpart on B"]


def test_compare_reports_parameter_differences() -> None:
    b, a = _toy()

    async def go(self: object, a: int, b: int = 2) -> None:
        pass

    a["go"] = Member("go", "coroutine", _without_self(go))
    (message,) = _compare(b, a)
    assert message.startswith("B.go(a: 'int', *, b: 'int' = 1) -> 'None' differs from A.go(")


def test_compare_reports_coroutines_on_the_wrong_side() -> None:
    b, a = _toy()
    b["go"] = Member("go", "coroutine", b["go"].signature)
    a["go"] = Member("go", "method", a["go"].signature)
    assert _compare(b, a) == [
        "B.go is a coroutine function; the blocking API's calls block",
        "A.go is not a coroutine function",
    ]


def test_compare_accepts_a_coroutine_on_both_sides_only_when_listed() -> None:
    b, a = _toy()
    sig = inspect.Signature()
    b["go_async"] = Member("go_async", "coroutine", sig)
    a["go_async"] = Member("go_async", "coroutine", sig)
    assert _compare(b, a) == []
    b["other"] = Member("other", "coroutine", sig)
    a["other"] = Member("other", "coroutine", sig)
    assert _compare(b, a) == ["B.other is a coroutine function; the blocking API's calls block"]


def test_compare_reports_a_setter_without_set_x() -> None:
    b, a = _toy()
    del a["set_name"]
    assert _compare(b, a) == ["B.name is settable but A has no coroutine set_name(value)"]


def test_compare_reports_a_set_x_that_does_not_match_the_setter() -> None:
    b, a = _toy()

    async def set_name(self: object, name: int) -> None:
        pass

    a["set_name"] = Member("set_name", "coroutine", _without_self(set_name))
    (message,) = _compare(b, a)
    assert message.startswith("B.name = (value: 'str') does not match A.set_name(name: 'int')")


def test_compare_reports_a_set_x_without_a_settable_property() -> None:
    b, a = _toy()
    b["name"] = Member("name", "property")
    assert _compare(b, a) == ["A.set_name has no counterpart on B"]


def test_compare_reports_a_property_that_is_a_method_on_the_other_side() -> None:
    b, a = _toy()
    a["state"] = Member("state", "coroutine", inspect.Signature())
    assert _compare(b, a) == ["B.state is a property, A.state a coroutine"]


def test_compare_counts_served_names_only_when_the_class_lacks_them() -> None:
    b, a = _toy()
    assert "windows_call" not in b and not hasattr(_Blocking, "windows_call")
    assert _compare(b, a) == []
    a["windows_call"] = Member("windows_call", "method", inspect.Signature())
    assert _compare(b, a) == ["A.windows_call (served by B.__getattr__) is not a coroutine"]
