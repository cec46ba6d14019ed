"""One file through a fresh ``Engine``, for tests that look at the failure it raises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import bitsnb
from bitsnb._engine import Engine, FileContext
from bitsnb._failures import TransferFailure
from bitsnb._records import FileRecord

TIMEOUT = 10.0


def file_record(url: str, temp: Path, **fields: object) -> FileRecord:
    """A file to download from *url* into the temporary file *temp*."""
    return FileRecord(
        index=0,
        remote_name=url,
        local_name=str(temp) + ".done",
        temp_name=str(temp),
        **fields,  # type: ignore[arg-type]
    )


def engine_failure(policy: bitsnb.Policy, f: FileRecord) -> TransferFailure:
    """Download *f* through a fresh engine (no proxies from the environment); the
    ``TransferFailure`` it raises (the test fails if it raises nothing)."""

    async def go() -> None:
        engine = Engine(policy)
        try:
            await engine.download(f, FileContext(trust_env=False))
        finally:
            await engine.aclose()

    with pytest.raises(TransferFailure) as info:
        asyncio.run(asyncio.wait_for(go(), TIMEOUT))
    return info.value
