"""The process-wide ``Manager`` the helpers use when given none (``default_manager``)."""

from __future__ import annotations

import threading

from ._sync import Manager

_default: Manager | None = None
_default_lock = threading.Lock()


def default_manager() -> Manager:
    """The process-wide ``Manager`` on the default store, created on first use (thread-safe).

    The store is ``$BITSNB_HOME/jobs.db`` or the user data folder (``default_store_path()``);
    the Manager closes itself at interpreter exit. A closed default manager is replaced.
    """
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Manager()
        return _default
