"""A connection's round trip from the kernel: Linux ``getsockopt(IPPROTO_TCP, TCP_INFO)``.

The yield controller (``_yielding``) needs each connection's current and base round trip, and
the receive-buffer sizing (``_bandwidth.receive_buffer_for``) its round trip; the kernel has
measured both already. This reads ``struct tcp_info`` as Linux's UAPI header defines it
(``include/uapi/linux/tcp.h``). The struct only grows at its end, so a field is read only when
the kernel's answer is long enough to hold it. Unpacking a fixed kernel struct is not parsing a
protocol. The layout, in bytes, native byte order, with no padding before ``tcpi_pacing_rate``:

====== ==================================================================================
offset fields
====== ==================================================================================
0      8 × u8: state, ca_state, retransmits, probes, backoff, options, wscale (4+4 bits),
       delivery_rate_app_limited / fastopen_client_fail bits
8      24 × u32: rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets,
       last_data_sent, last_ack_sent, last_data_recv, last_ack_recv, pmtu, rcv_ssthresh,
       **rtt**, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering, **rcv_rtt**, rcv_space,
       total_retrans (round trips in microseconds; ``last_*`` in milliseconds)
104    u64 pacing_rate, u64 max_pacing_rate, u64 bytes_acked, u64 **bytes_received**
136    u32 segs_out, u32 segs_in, u32 notsent_bytes, u32 **min_rtt** (Linux 4.6+), ...
====== ==================================================================================

``tcpi_rtt`` is the sender's smoothed estimate (from ACKs of what *we* send: on a download,
only requests and window updates, so it is rarely fresh); ``tcpi_rcv_rtt`` is the receiver's
own estimate (from TCP timestamps, or one window's worth of data), the one a receiver-side
controller (RFC 9840) uses; 0 means "not measured yet". Elsewhere (macOS, Windows, a socket
that is not TCP) ``tcp_info`` returns None, and the yield controller falls back to "full".
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

import httpx

__all__ = ["TcpInfo", "response_socket", "tcp_info", "tcp_info_available"]

_BASE = struct.Struct("=8B24I")  # offsets 0-103
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")
_BYTES_RECEIVED = 128
_MIN_RTT = 148
_ASK = 256  # bytes asked for; the kernel answers with what it has (232 on Linux 6.x)

_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None


@dataclass(frozen=True)
class TcpInfo:
    """The fields of ``struct tcp_info`` bitsnb uses; times in seconds, None when unmeasured."""

    state: int
    rtt: float  # smoothed round trip (the sending side's estimate)
    rttvar: float
    rcv_rtt: float | None  # the receiving side's estimate; None until measured
    min_rtt: float | None  # lowest round trip seen (Linux 4.6+); None if not reported
    rcv_space: int  # the receive-buffer autotuning's current space (bytes)
    snd_mss: int
    rcv_mss: int
    pmtu: int
    bytes_received: int | None  # None if the kernel is too old to report it
    last_data_recv: float = 0.0  # seconds since data last arrived on it

    @property
    def best_rtt(self) -> float | None:
        """The receiver's round trip if measured, else the sender's; None if neither is."""
        if self.rcv_rtt:
            return self.rcv_rtt
        return self.rtt or None


def tcp_info_available() -> bool:
    """True where ``tcp_info`` can answer (Linux)."""
    return _TCP_INFO is not None


def response_socket(resp: httpx.Response) -> socket.socket | None:
    """The socket a response's body arrives on (bitsnb's lean transport or httpcore's); None
    when it cannot be told (a test transport, HTTP/2 through a proxy, ...)."""
    sock = resp.extensions.get("bitsnb_socket")
    if sock is None:
        stream = resp.extensions.get("network_stream")
        get = getattr(stream, "get_extra_info", None)
        sock = get("socket") if callable(get) else None
    return sock if hasattr(sock, "getsockopt") else None


def tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The kernel's ``tcp_info`` of a connected TCP socket; None where unavailable or on error."""
    if _TCP_INFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _ASK)
    except OSError:
        return None
    return unpack_tcp_info(raw)


def unpack_tcp_info(raw: bytes) -> TcpInfo | None:
    """``struct tcp_info`` bytes → ``TcpInfo`` (None if shorter than the 104-byte base)."""
    if len(raw) < _BASE.size:
        return None
    f = _BASE.unpack_from(raw)
    u32 = f[8:]  # rto is u32[0]
    rcv_rtt = u32[21]
    min_rtt = _U32.unpack_from(raw, _MIN_RTT)[0] if len(raw) >= _MIN_RTT + 4 else 0
    received = (
        _U64.unpack_from(raw, _BYTES_RECEIVED)[0] if len(raw) >= _BYTES_RECEIVED + 8 else None
    )
    return TcpInfo(
        state=f[0],
        rtt=u32[15] / 1e6,
        rttvar=u32[16] / 1e6,
        rcv_rtt=rcv_rtt / 1e6 if rcv_rtt else None,
        min_rtt=min_rtt / 1e6 if min_rtt and min_rtt != 0xFFFFFFFF else None,
        rcv_space=u32[22],
        snd_mss=u32[2],
        rcv_mss=u32[3],
        pmtu=u32[13],
        bytes_received=received,
        last_data_recv=u32[11] / 1e3,
    )
