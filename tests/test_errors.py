"""The error table and BitsError: every code has a sentence, HTTP and unknown codes get generated
text (never an exception), only English is available, and errors print, repr and pickle well."""

from __future__ import annotations

import csv
import importlib.resources
import pickle
from pathlib import Path

import pytest

import bitsnb
from bitsnb import BitsError, ErrorContext, InvalidStateError, JobNotFoundError
from bitsnb._errors import all_errors, context_description, lookup_error

ERROR_RESOURCE_LANG_NOT_FOUND = 0x80070717
SPEC_CSV = Path("/work/shared/spec/errors.csv")


def _rows() -> list[dict[str, str]]:
    text = importlib.resources.files("bitsnb").joinpath("errors.csv").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


ROWS = _rows()


# codes bitsnb records that the spec's table lacks: E_FAIL, and the Win32 errors POSIX errno
# values translate to (``_codes.hresult_from_errno``)
ADDED_TO_SPEC = {
    "E_FAIL",
    "E_PENDING",
    "ERROR_TOO_MANY_OPEN_FILES",
    "ERROR_NOT_ENOUGH_MEMORY",
    "ERROR_NOT_SAME_DEVICE",
    "ERROR_WRITE_PROTECT",
    "ERROR_SHARING_VIOLATION",
    "ERROR_BUSY",
    "ERROR_FILENAME_EXCED_RANGE",
    "ERROR_FILE_TOO_LARGE",
    "ERROR_IO_DEVICE",
    "ERROR_CANT_RESOLVE_FILENAME",
}


def _spec_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(SPEC_CSV.read_text("utf-8").splitlines()))


def test_table_keeps_the_spec_names_and_codes() -> None:
    """Every code of the spec's table is in ours, in the same order, under the same name (the
    texts are ours: the spec's are research notes); the codes bitsnb adds come at the end, and
    each code is listed once."""
    if SPEC_CSV.exists():
        spec = [(r["name"], int(r["hresult"], 16)) for r in _spec_rows()]
        ours = [(r["name"], int(r["hresult"], 16)) for r in ROWS]
        assert ours[: len(spec)] == spec
        assert {name for name, _ in ours[len(spec) :]} == ADDED_TO_SPEC
    codes = [int(r["hresult"], 16) for r in ROWS]
    assert len(codes) == len(set(codes)) > 100
    assert [e.code for e in all_errors()] == codes


# what research notes look like: none of it belongs in a sentence a person reads
NOTE_MARKERS = (
    "1.5 only", "(Doc)", "IIS", "note the gap", "unused", "(context text)", "Bits-Client",
    "Operational log", "→", "`", "*", "HRESULT_FROM_WIN32", " / ", "newer text", "older text",
    "resume later", "try later", "e.g.", "vdir", ">1", "..UINT64",
)  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_descriptions_are_plain_sentences(row: dict[str, str]) -> None:
    """Each text is one or two sentences for the person who sees it: no research notes, a
    capital letter first and a full stop last; the spec's own text is never shipped."""
    for text in filter(None, (row["description"], row["upload_description"])):
        for marker in NOTE_MARKERS:
            assert marker not in text, (row["name"], marker)
        assert text[0].isupper() and text.endswith("."), text
        assert 1 <= text.count(". ") + 1 <= 2, text
    if SPEC_CSV.exists():
        spec = {r["name"]: r["description"] for r in _spec_rows()}
        if row["name"] in spec and row["name"] != "BG_E_NOT_FOUND":  # already plain in the spec
            assert row["description"] != spec[row["name"]]


UPLOAD = (bitsnb.JobType.UPLOAD, bitsnb.JobType.UPLOAD_REPLY)


@pytest.mark.parametrize("status", [400, 403, 404, 405, 410, 413, 416, 500, 501])
def test_http_codes_read_differently_for_uploads(status: int) -> None:
    """Where an upload server means something else by a status, the upload reading is given
    for upload jobs only; the plain call (no job type) and download jobs get the other."""
    code = 0x80190000 | status
    plain = bitsnb.get_error_description(code)
    assert bitsnb.get_error_description(code, job_type=bitsnb.JobType.DOWNLOAD) == plain
    for job_type in UPLOAD:
        upload = bitsnb.get_error_description(code, "en", job_type=job_type)
        assert upload != plain and str(status) in upload and "upload" in upload.lower()
    assert "upload" not in plain.lower()
    assert lookup_error(code).for_job(int(bitsnb.JobType.UPLOAD)) == upload


def test_download_404_and_501_say_nothing_about_uploads_or_iis() -> None:
    """The issue's examples: a download 404 is "not found", a 501 "not implemented"; 503
    says bitsnb retries (it does, after the retry delay) rather than "resume later"."""
    assert "not found" in bitsnb.get_error_description(0x80190194).lower()
    assert "not implemented" in bitsnb.get_error_description(0x801901F5).lower()
    assert "tries again" in bitsnb.get_error_description(0x801901F7)
    assert "404" in bitsnb.get_error_description(0x80190194, job_type=bitsnb.JobType.UPLOAD)


@pytest.mark.parametrize("status", [401, 407, 408, 503, 504])
def test_http_codes_that_mean_the_same_for_uploads(status: int) -> None:
    """Statuses without an upload meaning of their own read the same for every job type."""
    code = 0x80190000 | status
    plain = bitsnb.get_error_description(code)
    assert bitsnb.get_error_description(code, job_type=bitsnb.JobType.UPLOAD) == plain


def test_e_fail_has_a_text() -> None:
    """E_FAIL, which bitsnb records for failures it has no better code for, is in the table."""
    row = lookup_error(0x80004005)
    assert row.name == "E_FAIL"
    assert "Unknown" not in row.description and row.description


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_every_code_has_its_description(row: dict[str, str]) -> None:
    """get_error_description gives the table's sentence; the name round-trips."""
    code = int(row["hresult"], 16)
    text = bitsnb.get_error_description(code)
    assert text == row["description"] and text.strip()
    assert lookup_error(code).name == row["name"]
    assert BitsError(code).name == row["name"]
    assert bitsnb.get_error_description(code, "en-US") == text
    assert bitsnb.get_error_description(code, 0x0409) == text


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0x801901AE, ("430",)),
        (0x801901A2, ("418",)),
        (0x801901F3, ("499",)),
        (0x80190259, ("601",)),
    ],
    ids=lambda v: f"0x{v:08X}" if isinstance(v, int) else None,
)
def test_http_codes_outside_the_table(code: int, words: tuple[str, ...]) -> None:
    """0x8019xxxx codes the table lacks get a generated sentence naming the status."""
    assert code not in {int(r["hresult"], 16) for r in ROWS}
    text = bitsnb.get_error_description(code)
    for word in words:
        assert word in text
    assert "HTTP" in text
    assert lookup_error(code).name == f"BG_E_HTTP_ERROR_{code & 0xFFFF}"


def test_http_codes_in_the_table_use_the_table() -> None:
    """BG_E_HTTP_ERROR_404 comes from the table, not the generator."""
    row = next(r for r in ROWS if int(r["hresult"], 16) == 0x80190194)
    assert bitsnb.get_error_description(0x80190194) == row["description"]


@pytest.mark.parametrize(
    "code",
    [0x12345678, 0x8FFF0001, 0x80071234, 0xC0000005, 0x7FFFFFFF, 0x00000002, -1, 2**40, -(2**40)],
    ids=str,
)
def test_unknown_codes_get_generic_text(code: int) -> None:
    """Unknown codes: a sentence with the hex code, never an exception."""
    text = bitsnb.get_error_description(code)
    assert isinstance(text, str) and text
    norm = code & 0xFFFFFFFF
    if norm not in {int(r["hresult"], 16) for r in ROWS}:
        assert f"{norm:08X}" in text.upper() or str(norm & 0xFFFF) in text
    err = BitsError(code)
    assert str(err) and repr(err)
    assert err.code == norm


def test_negative_hresult_is_normalised() -> None:
    """A signed HRESULT (as COM code hands it over) means the same code."""
    assert bitsnb.get_error_description(-2145386495) == bitsnb.get_error_description(0x80200001)
    assert BitsError(-2145386495).code == 0x80200001


@pytest.mark.parametrize(
    "language", ["en", "EN", "en-US", "en_us", "en-GB", "", None, 0, 0x0409, 0x0809]
)
def test_english_is_available(language: str | int | None) -> None:
    """English (tag or LANGID) works; so do the defaults."""
    assert bitsnb.get_error_description(0x80200001, language) == "No job with that id in the queue."


@pytest.mark.parametrize("language", ["fr", "de-DE", "zz", 0x040C, 0x0407])
def test_other_languages_are_refused(language: str | int) -> None:
    """Another language: BitsError ERROR_RESOURCE_LANG_NOT_FOUND, saying only English exists."""
    with pytest.raises(BitsError) as info:
        bitsnb.get_error_description(0x80200001, language)
    assert info.value.code == ERROR_RESOURCE_LANG_NOT_FOUND
    assert "English" in str(info.value)


def test_manager_get_error_description(manager: bitsnb.Manager) -> None:
    """The manager method gives the same answers."""
    assert manager.get_error_description(0x80200002) == bitsnb.get_error_description(0x80200002)
    with pytest.raises(BitsError) as info:
        manager.get_error_description(0x80200002, "fr")
    assert info.value.code == ERROR_RESOURCE_LANG_NOT_FOUND


def test_bits_error_str_and_repr() -> None:
    """str: name, hex code and the message (or the table's sentence); repr: all three."""
    err = BitsError(0x80200002, "resume() is not allowed while the job is CANCELLED")
    assert str(err) == (
        "BG_E_INVALID_STATE (0x80200002): resume() is not allowed while the job is CANCELLED"
    )
    assert err.name == "BG_E_INVALID_STATE"
    assert err.description == bitsnb.get_error_description(0x80200002)
    assert "BG_E_INVALID_STATE" in repr(err) and "0x80200002" in repr(err)
    assert "CANCELLED" in repr(err)
    bare = BitsError(0x80200003)
    assert str(bare) == f"BG_E_EMPTY (0x80200003): {bitsnb.get_error_description(0x80200003)}"
    assert isinstance(err, Exception)


@pytest.mark.parametrize(
    "err",
    [
        BitsError(0x80200001, "gone", context=ErrorContext.REMOTE_FILE),
        BitsError(0x80190194),
        JobNotFoundError("no job 1234"),
        InvalidStateError("nope"),
    ],
    ids=["plain", "no-message", "not-found", "invalid-state"],
)
def test_bits_error_pickles(err: BitsError) -> None:
    """Errors survive pickling (multiprocessing, ipyparallel): type, code, message, context."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert back.code == err.code
    assert back.message == err.message
    assert back.context == err.context
    assert str(back) == str(err)


def test_error_subclasses() -> None:
    """JobNotFoundError is also a LookupError; both subclasses carry their codes."""
    nf = JobNotFoundError("x")
    assert isinstance(nf, LookupError) and isinstance(nf, BitsError)
    assert nf.code == 0x80200001
    assert InvalidStateError().code == 0x80200002


def test_context_descriptions() -> None:
    """Every error context has a sentence; an unknown one gets one too."""
    texts = {ctx: context_description(ctx) for ctx in ErrorContext}
    assert all(texts.values())
    assert len(set(texts.values())) == len(texts)
    assert "99" in context_description(99)


def test_error_info_reads_well() -> None:
    """ErrorInfo: name, description, context sentence and a one-line str."""
    info = bitsnb.ErrorInfo(0x80190194, ErrorContext.REMOTE_FILE, None, "http", "HTTP 404 for x")
    assert info.name == "BG_E_HTTP_ERROR_404"
    assert info.description == bitsnb.get_error_description(0x80190194)
    assert info.context_description == context_description(ErrorContext.REMOTE_FILE)
    assert str(info).startswith("BG_E_HTTP_ERROR_404 (0x80190194): ")
    assert "HTTP 404 for x" in str(info)
