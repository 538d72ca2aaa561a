#!/usr/bin/env python3
"""End-to-end: bounded memory for oversized bodies (release build), idle
and slow connections never starve normal requests. Everything stays on
loopback and every loop is bounded in time."""

import http.client
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem, describe, MiB  # noqa: E402

BODY = 60 * MiB


def release_server():
    if not harness.RELEASE_BIN:
        harness.skip('no release build')
    return Server(binary=harness.RELEASE_BIN)


RssSampler = harness.RssSampler


def warm_up(s):
    for _ in range(3):
        s.get('/healthz')
    s.upload_ok(corpus('photos/small-rocket-640x427.jpg'))
    s.get('/v1/images?limit=10')
    time.sleep(0.2)


def mem(s):
    st = s.status()
    return st.get('VmRSS', 0), st.get('VmHWM', 0)


def growth_report(before, after, peak):
    return 'VmRSS %.1f -> %.1f MiB, VmHWM %.1f -> %.1f MiB, sampled peak %.1f MiB' % (
        before[0] / MiB, after[0] / MiB, before[1] / MiB, after[1] / MiB, peak / MiB)


def zero_chunks(total, chunk=256 * 1024):
    sent = 0
    block = b'\0' * chunk
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield block if n == chunk else block[:n]


@test
def body_of_60MiB_with_content_length_is_413_without_buffering_it():
    s = release_server()
    warm_up(s)
    before = mem(s)
    head = ('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
            'Content-Length: %d\r\n\r\n' % BODY).encode()
    with RssSampler(s.pid) as sampler:
        r = harness.send_streaming(s.port, head, zero_chunks(BODY), deadline_s=60)
        time.sleep(0.2)
    after = mem(s)
    rep = growth_report(before, after, sampler.peak)
    assert r['status'] is not None, 'no answer (%s, %d body bytes sent); %s' % (
        r['error'], r['sent'], rep)
    check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')
    growth = max(after[1] - before[1], sampler.peak - before[0], after[0] - before[0])
    assert growth < 20 * MiB, 'memory grew by %.1f MiB: %s' % (growth / MiB, rep)
    assert s.healthy(), 'no answer to the next request'
    harness._diag('%s (body bytes sent before the answer: %d)' % (rep, r['sent']))
    s.stop()


@test
def chunked_body_of_60MiB_is_cut_or_413_without_buffering_it():
    s = release_server()
    warm_up(s)
    before = mem(s)
    head = (b'POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
            b'Transfer-Encoding: chunked\r\n\r\n')

    def chunks():
        for c in zero_chunks(BODY):
            yield b'%x\r\n' % len(c) + c + b'\r\n'
        yield b'0\r\n\r\n'

    with RssSampler(s.pid) as sampler:
        r = harness.send_streaming(s.port, head, chunks(), deadline_s=90, first_wait=0.2)
        time.sleep(0.2)
    after = mem(s)
    rep = growth_report(before, after, sampler.peak)
    if r['status'] is not None:
        check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')
    else:
        assert r['cut'], 'neither an answer nor a cut connection: %s' % r
    assert r['sent'] < BODY or r['status'] == 413, \
        'the whole 60 MiB was taken without an answer: %s' % r
    growth = max(after[1] - before[1], sampler.peak - before[0], after[0] - before[0])
    assert growth < BODY, 'memory grew by %.1f MiB (the whole body): %s' % (growth / MiB, rep)
    assert s.healthy(), 'no answer to the next request'
    harness._diag('%s (status %s, body bytes sent %d)' % (rep, r['status'], r['sent']))
    s.stop()


_srv = None


def srv():
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server()
    return _srv


def timed_get(s, path='/healthz', limit=2.0, source=None):
    t0 = time.monotonic()
    if source is None:
        st, h, b = s.request('GET', path, timeout=limit + 3)
    else:
        sock = harness.connect(s.port, source=source, timeout=limit + 3)
        try:
            sock.sendall(('GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'
                          % path).encode())
            st, h, b = harness.read_response(sock, timeout=limit + 3)
        finally:
            sock.close()
    took = time.monotonic() - t0
    return st, h, b, took


@test
def two_hundred_idle_connections_do_not_block_a_request():
    s = srv()
    socks = []
    try:
        end = time.monotonic() + 20
        for i in range(200):
            if time.monotonic() > end:
                break
            try:
                c = harness.connect(s.port, timeout=5)
            except OSError:
                continue
            if i % 2:
                # one request, then keep the keep-alive connection open and idle
                try:
                    c.sendall(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
                    harness.read_response(c, timeout=5)
                except (OSError, http.client.HTTPException):
                    c.close()
                    continue
            socks.append(c)
        assert len(socks) >= 150, 'only %d idle connections could be opened' % len(socks)
        for _ in range(5):
            st, h, b, took = timed_get(s)
            assert st == 200, describe(st, h, b)
            assert took < 2.0, 'a request took %.2f s with %d idle connections' % (
                took, len(socks))
            time.sleep(0.1)
        t0 = time.monotonic()
        img = s.upload_ok(corpus('photos/small-canon-ixus-640x480.jpg'))
        took = time.monotonic() - t0
        assert took < 10, 'an upload took %.1f s with idle connections open' % took
        st, h, b, took = timed_get(s, '/v1/images/%s/info' % img['id'])
        assert st == 200 and took < 2.0, '%.2f s\n%s' % (took, describe(st, h, b))
    finally:
        for c in socks:
            c.close()
    assert s.healthy()


def _have_127_0_0_2():
    try:
        t = socket.socket()
        t.bind(('127.0.0.2', 0))
        t.close()
        return True
    except OSError:
        return False


@test
def slow_headers_from_another_client_do_not_starve_loopback():
    if not _have_127_0_0_2():
        harness.skip('cannot bind 127.0.0.2')
    s = srv()
    header = b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ' + b'a' * 200
    state = {'opened': 0, 'refused': 0, 'dropped': 0, 'bytes': 0, 'done': False}
    socks = []
    stop = threading.Event()

    def slowloris():
        try:
            end_open = time.monotonic() + 8
            for _ in range(200):
                if stop.is_set() or time.monotonic() > end_open:
                    break
                try:
                    c = harness.connect(s.port, source='127.0.0.2', timeout=1)
                    c.setblocking(False)
                    socks.append([c, 0])
                    state['opened'] += 1
                except OSError:
                    state['refused'] += 1
            end = time.monotonic() + 5
            while not stop.is_set() and time.monotonic() < end:
                for entry in list(socks):
                    c, pos = entry
                    try:
                        c.send(header[pos % len(header):pos % len(header) + 1])
                        entry[1] += 1
                        state['bytes'] += 1
                    except OSError:
                        socks.remove(entry)
                        c.close()
                        state['dropped'] += 1
                stop.wait(1.0)
        finally:
            state['done'] = True

    t = threading.Thread(target=slowloris, daemon=True)
    t.start()
    slow = []
    n = 0
    try:
        end = time.monotonic() + 15
        while not state['done'] and time.monotonic() < end:
            n += 1
            try:
                st, h, b, took = timed_get(s)
            except (OSError, http.client.HTTPException) as e:
                raise AssertionError('loopback request failed during the slow clients: %r '
                                     '(%s)' % (e, state))
            assert st == 200, describe(st, h, b)
            if took >= 2.0:
                slow.append(took)
            if n % 8 == 0:
                img = s.upload_ok(harness.make_png(seed=n, text='during slowloris %d' % n),
                                  'image/png')
                assert img['width'] == 64
            time.sleep(0.25)
    finally:
        stop.set()
        t.join(20)
        for c, _ in socks:
            c.close()
    assert not slow, 'requests took %s s (%s)' % (slow, state)
    assert n >= 5, 'only %d requests were made (%s)' % (n, state)
    harness._diag('slow clients: %s; loopback requests: %d' % (state, n))
    # once the slow connections are gone, 127.0.0.2 is served again
    ok = harness.wait_until(lambda: _get_from(s, '127.0.0.2'), 10.0, interval=0.5)
    assert ok, '127.0.0.2 still not served 10 s after closing its connections'
    assert s.healthy()


def _get_from(s, source):
    try:
        st, _, _, _ = timed_get(s, source=source, limit=3.0)
        return st == 200
    except (OSError, http.client.HTTPException):
        return False


@test
def many_connections_from_one_non_exempt_client_are_bounded_and_released():
    if not _have_127_0_0_2():
        harness.skip('cannot bind 127.0.0.2')
    s = Server(['--max-client-connections', '8'])
    socks = []
    try:
        for _ in range(20):
            try:
                c = harness.connect(s.port, source='127.0.0.2', timeout=2)
                c.sendall(b'GET /healthz HTTP/1.1\r\n')
                socks.append(c)
            except OSError:
                pass
        # loopback stays served
        st, h, b, took = timed_get(s)
        assert st == 200 and took < 2.0, '%.2f s\n%s' % (took, describe(st, h, b))
    finally:
        for c in socks:
            c.close()
    ok = harness.wait_until(lambda: _get_from(s, '127.0.0.2'), 10.0, interval=0.5)
    assert ok, '127.0.0.2 not served 10 s after closing its connections'
    s.stop()


if __name__ == '__main__':
    harness.run()
