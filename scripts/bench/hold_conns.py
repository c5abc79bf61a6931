"""Opens COUNT client connections to HOST:PORT, sends one request on each
(HTTP/1.1 keep-alive, or HTTP/2 with prior knowledge: --http2), reads its
whole answer, then holds them all open and idle until SIGTERM or --seconds
pass. Prints "held N failed M" once all are open, so bench.sh can measure the
server's memory while they are held. (Not until stdin closes: bench.sh starts
it with stdin from /dev/null, which would close them before the measurement.)

Connections are opened a window at a time, without blocking, and from source
addresses 127.0.0.2, 127.0.0.3, ... in turn when the host is a loopback
address: one source address has about 28,000 ports to connect from, fewer
than --count may ask for; and the servers under test listen on 127.0.0.1,
on ports from the same range, which a client socket there would take."""

import argparse
import errno
import ipaddress
import resource
import selectors
import signal
import socket
import struct
import sys
import time

# Connections opening (and waiting for their answer) at once. The proxies
# keep the upstream connections their requests used at once in their pools
# (nginx up to 64 here), which would count as memory of the held clients:
# a small window keeps that small, and still opens 10,000 in a few seconds.
WINDOW = 16
# Connections one loopback source address opens before the next takes over
# (the kernel's default ephemeral range is 28,232 ports).
PER_SOURCE = 20_000
# Linux's IP_BIND_ADDRESS_NO_PORT: pick the source port at connect(), per
# destination, rather than at bind(), where every port must be unique.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_HEADERS, H2_SETTINGS, H2_DATA = 0x1, 0x4, 0x0
H2_END_STREAM, H2_END_HEADERS, H2_ACK = 0x1, 0x4, 0x1


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def hpack_literal(index: int, value: str) -> bytes:
    """A header field "literal without indexing" whose name is static-table
    entry INDEX (below 15), its value not Huffman-coded (under 127 bytes)."""
    raw = value.encode()
    return bytes([index, len(raw)]) + raw


def h2_request(authority: str, path: str) -> bytes:
    # :method GET (static 2), :scheme http (static 6), :path (name 4), :authority (name 1).
    block = b"\x82\x86" + hpack_literal(4, path) + hpack_literal(1, authority)
    return (
        H2_PREFACE
        + h2_frame(H2_SETTINGS, 0, 0, b"")
        + h2_frame(H2_HEADERS, H2_END_STREAM | H2_END_HEADERS, 1, block)
    )


class Conn:
    """One client connection: its socket, what it has read, and whether its
    answer is complete."""

    def __init__(self, sock: socket.socket, http2: bool) -> None:
        self.sock = sock
        self.http2 = http2
        self.buf = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Takes bytes read; returns bytes to send back (an HTTP/2 SETTINGS
        acknowledgement)."""
        self.buf += data
        if not self.http2:
            # One small answer, with a Content-Length or chunked: its end is
            # the empty line plus the body; the servers here answer 200 with a
            # short body or a 302 with none, so the head and what follows at
            # once is the whole answer.
            if b"\r\n\r\n" in self.buf:
                self.done = True
            return b""
        reply = b""
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            kind, flags, stream = self.buf[3], self.buf[4], struct.unpack(">I", self.buf[5:9])[0]
            self.buf = self.buf[9 + length :]
            if kind == H2_SETTINGS and not flags & H2_ACK:
                reply += h2_frame(H2_SETTINGS, H2_ACK, 0, b"")
            if stream == 1 and kind in (H2_HEADERS, H2_DATA) and flags & H2_END_STREAM:
                self.done = True
        return reply


def sources(host: str, count: int) -> list[str]:
    """The source address of each connection (None: the kernel's choice)."""
    addr = ipaddress.ip_address(host)
    if not (addr.version == 4 and addr.is_loopback):
        return [None] * count
    return [str(ipaddress.ip_address("127.0.0.2") + i // PER_SOURCE) for i in range(count)]


def open_all(args: argparse.Namespace) -> tuple[list[socket.socket], int]:
    if args.http2:
        request = h2_request(f"{args.host}:{args.port}", args.path)
    else:
        request = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
            "Connection: keep-alive\r\n\r\n"
        ).encode()
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []
    failed = 0
    src = sources(args.host, args.count)
    started = 0
    pending = 0
    deadline = time.monotonic() + args.open_timeout

    def start(i: int) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if src[i] is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((src[i], 0))
            sock.setblocking(False)
            rc = sock.connect_ex((args.host, args.port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, errno.errorcode.get(rc, "connect"))
        except OSError:
            sock.close()
            return False
        sel.register(sock, selectors.EVENT_WRITE, Conn(sock, args.http2))
        return True

    def finish(conn: Conn, ok: bool) -> None:
        nonlocal failed, pending
        sel.unregister(conn.sock)
        pending -= 1
        if ok:
            held.append(conn.sock)
        else:
            failed += 1
            conn.sock.close()

    while started < args.count or pending:
        while started < args.count and pending < WINDOW:
            if start(started):
                pending += 1
            else:
                failed += 1
            started += 1
        if time.monotonic() > deadline:
            for key in list(sel.get_map().values()):
                finish(key.data, False)
            break
        for key, events in sel.select(timeout=1.0):
            conn = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    # Connected (or failed): the request fits in one send.
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    conn.sock.sendall(request)
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = conn.sock.recv(65536)
                if not data:
                    raise OSError("closed before the answer")
                reply = conn.feed(data)
                if reply:
                    conn.sock.sendall(reply)
                if conn.done:
                    finish(conn, True)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                finish(conn, False)
    sel.close()
    return held, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--path", default="/")
    parser.add_argument("--http2", action="store_true", help="HTTP/2 with prior knowledge")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--open-timeout", type=float, default=120.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    began = time.monotonic()
    conns, failed = open_all(args)
    print(f"held {len(conns)} failed {failed} in {time.monotonic() - began:.1f}s", flush=True)

    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    for s in conns:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
