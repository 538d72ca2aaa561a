#!/usr/bin/env python3
"""End-to-end: --max-client-requests (429 past it, loopback exempt,
X-Forwarded-For from a --trusted-proxy names the client)."""

import http.client
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem  # noqa: E402

BIG = corpus('photos/22mp-canon-5d3-5760x3840.jpg')


def burst(srv, img_id, n, source='127.0.0.1', headers=None):
    """n concurrent full transforms (distinct widths, so no cache hit)."""
    out = []
    lock = threading.Lock()

    def one(i):
        c = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=120,
                                       source_address=(source, 0))
        c.request('GET', '/v1/images/%s?w=%d&sharpen=1' % (img_id, 2000 + i),
                  headers=headers or {})
        r = c.getresponse()
        body = r.read()
        with lock:
            out.append((r.status, {k.lower(): v for k, v in r.getheaders()}, body))
        c.close()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    return out


@test
def a_client_over_its_limit_gets_429_and_loopback_is_exempt():
    srv = Server(['--max-client-requests', '1', '--concurrency', '1', '--queue-max', '16'])
    try:
        img = srv.upload_ok(BIG)
        res = burst(srv, img['id'], 5, source='127.0.0.2')
        statuses = sorted(r[0] for r in res)
        assert 429 in statuses, 'no 429 for 5 concurrent requests from one client: %s' % statuses
        assert 200 in statuses, 'nothing served: %s' % statuses
        for st, h, b in res:
            if st == 429:
                check_problem(st, h, b, 429, 'too-many-requests')
                assert h.get('retry-after'), 'no Retry-After on 429'
            else:
                assert st == 200, statuses
        # 127.0.0.1 is exempt by default: all served.
        res = burst(srv, img['id'], 4, source='127.0.0.1')
        assert sorted(r[0] for r in res) == [200] * 4, [r[0] for r in res]
        # The count was released: the same client is served again.
        res = burst(srv, img['id'], 1, source='127.0.0.2')
        assert res[0][0] == 200, res[0][0]
    finally:
        srv.stop()


@test
def forwarded_for_names_the_client_behind_a_trusted_proxy():
    srv = Server(['--max-client-requests', '1', '--concurrency', '1', '--queue-max', '16',
                  '--limit-exempt', '', '--trusted-proxy', '127.0.0.1/32'])
    try:
        img = srv.upload_ok(BIG)
        # Two clients behind the proxy: each may have one request in.
        a = burst(srv, img['id'], 3, headers={'X-Forwarded-For': '203.0.113.7, 198.51.100.1'})
        assert 429 in [r[0] for r in a], [r[0] for r in a]
        # From an untrusted peer the header is ignored: 127.0.0.2 is the client.
        b = burst(srv, img['id'], 3, source='127.0.0.2',
                  headers={'X-Forwarded-For': '192.0.2.1'})
        assert 429 in [r[0] for r in b], [r[0] for r in b]
        assert srv.healthy()
    finally:
        srv.stop()


if __name__ == '__main__':
    harness.run()
