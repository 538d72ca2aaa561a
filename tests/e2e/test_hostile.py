#!/usr/bin/env python3
"""End-to-end hostile load (issue 7, "limits under attack"), on the release
build so that latency and memory figures mean something:

1. baseline: a paced stream of normal requests from 127.0.0.1 (health,
   original, small real transforms) for ~5 s; p50/p99 reported;
2. the same stream while 500 slow connections from 127.0.0.2..127.0.0.9
   send one header byte a second: every normal request is answered and the
   p99 stays reasonable;
3. a burst of 100 concurrent 22 MP transforms against a capacity of 10
   (--concurrency 2 --queue-max 8): only 200s and clean 503 overloaded
   problems, the server stays up, peak RSS is reported and bounded.

Loopback only, every loop bounded in time. Attacking sockets come from
127.0.0.2 and up so that 127.0.0.1 stays exempt from per-client limits."""

import http.client
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem, describe, MiB  # noqa: E402

SMALL = corpus('photos/small-rocket-640x427.jpg')
BIG = corpus('photos/22mp-canon-5d3-5760x3840.jpg')

STREAM_SECONDS = 5.0
STREAM_INTERVAL = 0.025        # one normal request started every 25 ms (when not slower)
REQUEST_TIMEOUT = 15.0         # a normal request not answered in this long is a failure
SLOW_CONNECTIONS = 500
ATTACK_SOURCES = ['127.0.0.%d' % i for i in range(2, 10)]   # 8 addresses
PER_SOURCE = -(-SLOW_CONNECTIONS // len(ATTACK_SOURCES))    # 63 < 128 per address
ATTACK_P99_FLOOR = 2.0         # p99 bound under attack: max(2 s, 10 x baseline p99 + 200 ms)
ATTACK_MAX = 5.0               # and no single normal request slower than this
BURST = 100
RSS_BOUND = 600 * MiB

_state = {'srv': None, 'img': None, 'base_p99': None, 'width': 40}


def release_bin():
    if not harness.RELEASE_BIN:
        harness.skip('IMAGE_SERVER_RELEASE_BIN is not set (latency and memory figures need '
                     'the release build)')
    return harness.RELEASE_BIN


def have_sources():
    for a in ATTACK_SOURCES:
        try:
            t = socket.socket()
            t.bind((a, 0))
            t.close()
        except OSError:
            return False
    return True


def shared():
    """The release server of tests 1 and 2 (default limits) with the small
    photo uploaded."""
    binary = release_bin()
    s = _state['srv']
    if s is None or not s.alive():
        s = Server(binary=binary)
        _state['srv'] = s
        _state['img'] = s.upload_ok(SMALL)
    return s, _state['img']


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def jpeg_size(data):
    """(width, height) from a JPEG's SOF marker, or None."""
    if data[:2] != b'\xff\xd8':
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xff:
            return None
        m = data[i + 1]
        if m == 0xff:
            i += 1
            continue
        if m in (0xd8, 0x01) or 0xd0 <= m <= 0xd7:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], 'big')
        if 0xc0 <= m <= 0xcf and m not in (0xc4, 0xc8, 0xcc):
            if i + 9 > len(data):
                return None
            h = int.from_bytes(data[i + 5:i + 7], 'big')
            w = int.from_bytes(data[i + 7:i + 9], 'big')
            return w, h
        i += 2 + seg
    return None


def normal_request(s, img, kind):
    """One normal request of the given kind on a fresh connection from
    127.0.0.1; checks the answer; returns the latency in seconds."""
    if kind == 'health':
        path = '/healthz'
    elif kind == 'original':
        path = '/v1/images/%s' % img['id']
    else:
        w = _state['width']
        _state['width'] += 1         # a distinct width every time: a real transform
        path = '/v1/images/%s?w=%d&q=70' % (img['id'], w)
    t0 = time.monotonic()
    try:
        st, h, b = s.request('GET', path, timeout=REQUEST_TIMEOUT)
    except (OSError, http.client.HTTPException) as e:
        raise AssertionError('GET %s failed after %.2f s: %r' % (path, time.monotonic() - t0, e))
    took = time.monotonic() - t0
    assert st == 200, 'GET %s\n%s' % (path, describe(st, h, b))
    if kind == 'original':
        assert harness.sha256(b) == img['sha256'], 'GET %s: not the original bytes' % path
    elif kind == 'variant':
        assert h.get('content-type', '').startswith('image/jpeg'), \
            'GET %s\n%s' % (path, describe(st, h, b))
        size = jpeg_size(b)
        assert size is not None and size[0] == w, 'GET %s: got a %s image\n%s' % (
            path, size, describe(st, h, b, limit=64))
    return took


def normal_stream(s, img, seconds):
    """A paced stream of normal requests; returns {kind: [latencies]}."""
    kinds = ('health', 'original', 'variant')
    lat = {k: [] for k in kinds}
    end = time.monotonic() + seconds
    nxt = time.monotonic()
    n = 0
    while time.monotonic() < end:
        kind = kinds[n % 3]
        n += 1
        lat[kind].append(normal_request(s, img, kind))
        nxt += STREAM_INTERVAL
        pause = nxt - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            nxt = time.monotonic()
    return lat


def summary(lat):
    allv = [x for v in lat.values() for x in v]
    p50, p99 = percentile(allv, 50), percentile(allv, 99)
    parts = ['%s p50 %.1f / max %.1f ms' % (k, percentile(v, 50) * 1000, max(v) * 1000)
             for k, v in lat.items() if v]
    return p50, p99, '%d requests: p50 %.1f ms, p99 %.1f ms (%s)' % (
        len(allv), p50 * 1000, p99 * 1000, '; '.join(parts))


class SlowLoris:
    """SLOW_CONNECTIONS connections spread over ATTACK_SOURCES, each sending
    one byte of a never-ending request head a second, all driven by one
    thread with poll(). Counts what the server refused or closed."""

    HEAD = (b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + b'a' * 4000)

    def __init__(self, port):
        self.port = port
        self.stats = {'attempted': 0, 'connect_failed': 0, 'refused': 0,
                      'closed_by_server': 0, 'bytes_sent': 0, 'open_at_end': 0}
        self.socks = {}            # fd -> [sock, bytes sent]
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.thread.join(30)
        for sock, _ in self.socks.values():
            sock.close()
        self.socks.clear()

    def _drop(self, poller, fd, key):
        sock, _ = self.socks.pop(fd)
        try:
            poller.unregister(fd)
        except (KeyError, ValueError):
            pass
        sock.close()
        self.stats[key] += 1

    def _run(self):
        try:
            self._attack()
        except BaseException as e:  # noqa: B902 - reported by the test
            self.error = e
        finally:
            self.opened.set()

    def _attack(self):
        poller = select.poll()
        deadline = time.monotonic() + 20
        for i in range(SLOW_CONNECTIONS):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            src = ATTACK_SOURCES[i // PER_SOURCE]
            self.stats['attempted'] += 1
            try:
                sock = harness.connect(self.port, source=src, timeout=2)
            except OSError:
                self.stats['connect_failed'] += 1
                continue
            sock.setblocking(False)
            self.socks[sock.fileno()] = [sock, 0]
            poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        # A connection the server refused (per-client or total limit) is
        # accepted and closed at once: give it a moment, then count it.
        time.sleep(0.3)
        for fd, ev in poller.poll(0):
            if fd in self.socks and self._closed(fd):
                self._drop(poller, fd, 'refused')
        self.opened.set()
        while not self.stop.is_set():
            tick = time.monotonic() + 1.0
            for fd in list(self.socks):
                sock, pos = self.socks[fd]
                if pos >= len(self.HEAD):
                    continue
                try:
                    n = sock.send(self.HEAD[pos:pos + 1])
                    self.socks[fd][1] += n
                    self.stats['bytes_sent'] += n
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop(poller, fd, 'closed_by_server')
            while not self.stop.is_set():
                left = tick - time.monotonic()
                if left <= 0:
                    break
                for fd, ev in poller.poll(min(left, 0.2) * 1000):
                    if fd in self.socks and self._closed(fd):
                        self._drop(poller, fd, 'closed_by_server')
        self.stats['open_at_end'] = len(self.socks)

    def _closed(self, fd):
        sock = self.socks[fd][0]
        try:
            sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        # EOF, or an answer (e.g. 408) the server sends before closing:
        # either way it is giving up on this connection
        return True


@test
def baseline_latency_of_normal_requests():
    s, img = shared()
    for _ in range(3):                       # warm up (first transform loads libvips bits)
        normal_request(s, img, 'variant')
    lat = normal_stream(s, img, STREAM_SECONDS)
    p50, p99, text = summary(lat)
    _state['base_p99'] = p99
    harness._diag('baseline: ' + text)
    assert s.healthy()


@test
def five_hundred_slow_connections_do_not_starve_normal_requests():
    if not have_sources():
        harness.skip('cannot bind 127.0.0.2..127.0.0.9')
    s, img = shared()
    base_p99 = _state['base_p99']
    bound = ATTACK_P99_FLOOR if base_p99 is None else max(ATTACK_P99_FLOOR,
                                                           10 * base_p99 + 0.2)
    with SlowLoris(s.port) as loris:
        assert loris.opened.wait(30), 'the slow connections were not opened within 30 s'
        if loris.error:
            raise loris.error
        open_now = len(loris.socks)
        try:
            lat = normal_stream(s, img, STREAM_SECONDS)
        finally:
            loris.stop.set()
            loris.thread.join(30)
        if loris.error:
            raise loris.error
        stats = dict(loris.stats)
    p50, p99, text = summary(lat)
    harness._diag('under attack: ' + text)
    harness._diag('slow connections: %d attempted, %d open once connected, %d open at the end; '
                  '%d refused by the server, %d closed by it during the attack, %d failed to '
                  'connect; %d header bytes sent' % (
                      stats['attempted'], open_now, stats['open_at_end'], stats['refused'],
                      stats['closed_by_server'], stats['connect_failed'], stats['bytes_sent']))
    assert stats['attempted'] == SLOW_CONNECTIONS, stats
    # 63 per address is under the default per-address limit of 128: the
    # attack is real only if most of them stay open.
    assert stats['open_at_end'] >= SLOW_CONNECTIONS * 0.9, \
        'only %d slow connections stayed open: %s' % (stats['open_at_end'], stats)
    n = sum(len(v) for v in lat.values())
    assert n >= 30, 'only %d normal requests in %.0f s under attack' % (n, STREAM_SECONDS)
    assert p99 <= bound, 'p99 under attack %.3f s > bound %.3f s (baseline p99 %s)' % (
        p99, bound, '%.3f s' % base_p99 if base_p99 is not None else 'unknown')
    slowest = max(x for v in lat.values() for x in v)
    assert slowest <= ATTACK_MAX, 'a normal request took %.3f s under attack (> %.0f s)' % (
        slowest, ATTACK_MAX)
    assert s.healthy(), 'not healthy after the attack'
    # once the slow connections are gone, an attacking address is served again
    ok = harness.wait_until(lambda: _served_from(s, ATTACK_SOURCES[0]), 10.0, interval=0.5)
    assert ok, '%s not served 10 s after closing its slow connections' % ATTACK_SOURCES[0]


def _served_from(s, source):
    try:
        sock = harness.connect(s.port, source=source, timeout=3)
        try:
            sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
            st, _, _ = harness.read_response(sock, timeout=3)
        finally:
            sock.close()
        return st == 200
    except (OSError, http.client.HTTPException):
        return False


RssSampler = harness.RssSampler


@test
def burst_ten_times_over_capacity_gets_clean_503s_in_bounded_memory():
    s = Server(['--concurrency', '2', '--queue-max', '8'], binary=release_bin())
    try:
        img = s.upload_ok(BIG)
        before = s.status()
        results = [None] * BURST
        gate = threading.Barrier(BURST, timeout=30)

        def one(i):
            path = '/v1/images/%s?w=%d&sharpen=1' % (img['id'], 2000 + i)
            c = http.client.HTTPConnection('127.0.0.1', s.port, timeout=120)
            t0 = time.monotonic()
            try:
                c.connect()
                try:
                    gate.wait()
                except threading.BrokenBarrierError:
                    pass
                t0 = time.monotonic()
                c.request('GET', path)
                r = c.getresponse()
                body = r.read()
                results[i] = (r.status, {k.lower(): v for k, v in r.getheaders()}, body,
                              time.monotonic() - t0, None)
            except (OSError, http.client.HTTPException) as e:
                results[i] = (None, {}, b'', time.monotonic() - t0, e)
            finally:
                c.close()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(BURST)]
        t_start = time.monotonic()
        with RssSampler(s.pid) as sampler:
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(1.0, 150 - (time.monotonic() - t_start)))
            wall = time.monotonic() - t_start
        after = s.status()
        missing = [i for i, r in enumerate(results) if r is None]
        errors = [(i, r[4]) for i, r in enumerate(results) if r is not None and r[4] is not None]
        ok = [r for r in results if r is not None and r[0] == 200]
        rejected = [r for r in results if r is not None and r[0] == 503]
        other = [r for r in results if r is not None and r[0] not in (200, 503, None)]
        harness._diag(
            'burst of %d: %d served (200), %d refused (503), %d other, %d errors, %d unanswered '
            'in %.1f s; slowest 503 %.3f s, fastest 200 %.3f s' % (
                BURST, len(ok), len(rejected), len(other), len(errors), len(missing), wall,
                max([r[3] for r in rejected] or [0]), min([r[3] for r in ok] or [0])))
        harness._diag('server memory: VmRSS %.1f MiB before, sampled peak %.1f MiB '
                      '(%d samples), VmHWM %.1f MiB after the burst' % (
                          before.get('VmRSS', 0) / MiB, sampler.peak / MiB, sampler.samples,
                          after.get('VmHWM', 0) / MiB))
        assert not missing, 'requests %s got no answer within 150 s' % missing[:10]
        assert not errors, 'connection errors (resets?): %s' % [
            (i, repr(e)) for i, e in errors[:10]]
        assert not other, 'unexpected statuses: %s\nfirst one:\n%s' % (
            sorted(r[0] for r in other), describe(*other[0][:3]))
        assert ok, 'no request was served'
        assert rejected, 'no 503 for %d requests against a capacity of 10' % BURST
        for st, h, b, _, _ in rejected:
            check_problem(st, h, b, 503, 'overloaded')
            assert h.get('retry-after'), 'no Retry-After on a 503\n' + describe(st, h, b)
        for st, h, b, _, _ in ok:
            assert jpeg_size(b) is not None, 'a 200 is not a JPEG\n' + describe(st, h, b, 64)
        assert s.alive(), 'the server died during the burst'
        assert s.healthy(), '/healthz not 200 after the burst'
        st, h, b = s.request('GET', '/v1/images/%s?w=300' % img['id'], timeout=60)
        assert st == 200, 'a transform after the burst failed\n' + describe(st, h, b)
        peak = max(after.get('VmHWM', 0), sampler.peak)
        assert peak < RSS_BOUND, 'peak RSS %.1f MiB >= %.0f MiB' % (peak / MiB, RSS_BOUND / MiB)
    finally:
        s.stop()


if __name__ == '__main__':
    harness.run()
