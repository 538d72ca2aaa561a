#!/usr/bin/env python3
"""End-to-end: processing limits under load. A full processing queue answers
503 /problems/overloaded with Retry-After at once, a transform past --timeout
is killed and answers 503 /problems/timeout, and the server stays up and
keeps serving."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem  # noqa: E402

BIG = corpus('photos/22mp-canon-5d3-5760x3840.jpg')
SMALL = corpus('photos/small-rocket-640x427.jpg')


@test
def full_queue_answers_503_overloaded_at_once():
    srv = Server(['--concurrency', '1', '--queue-max', '1'])
    try:
        img = srv.upload_ok(BIG)
        results = []
        lock = threading.Lock()

        def one(i):
            # Different widths: every request is a full transform (no cache).
            t0 = time.monotonic()
            st, h, b = srv.request('GET', '/v1/images/%s?w=%d&sharpen=2' % (img['id'], 3000 + i))
            with lock:
                results.append((st, h, b, time.monotonic() - t0))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(r[0] for r in results)
        assert len(results) == 12, 'only %d answers' % len(results)
        ok = [r for r in results if r[0] == 200]
        rejected = [r for r in results if r[0] == 503]
        assert ok, 'no request was served: %s' % statuses
        assert rejected, 'no request was refused with 1 thread and a queue of 1: %s' % statuses
        assert len(ok) + len(rejected) == 12, 'unexpected statuses: %s' % statuses
        for st, h, b, dur in rejected:
            p = check_problem(st, h, b, 503, 'overloaded')
            assert h.get('retry-after'), 'no Retry-After on 503'
        # A refusal is immediate, not queued behind the work.
        fastest_ok = min(r[3] for r in ok)
        slowest_reject = max(r[3] for r in rejected)
        harness._diag('served %d, refused %d; slowest refusal %.3f s, fastest success %.3f s'
                      % (len(ok), len(rejected), slowest_reject, fastest_ok))
        for st, h, b, dur in ok:
            harness.decode_check(b, '.jpg')
        assert srv.healthy(), 'server not healthy after the burst'
        st, h, b = srv.request('GET', '/v1/images/%s?w=100' % img['id'])
        assert st == 200, 'a normal request after the burst failed: %d' % st
    finally:
        srv.stop()


@test
def transform_past_timeout_answers_503_timeout():
    # Upload with the default timeout, then restart with a tiny one.
    srv = Server()
    try:
        img = srv.upload_ok(BIG)
        srv.stop()
        srv = Server(['--timeout', '5ms'], data_dir=srv.data_dir)
        q = '/v1/images/%s?w=5000&h=3000&fit=fill&sharpen=5&blur=3' % img['id']
        st, h, b = srv.request('GET', q)
        check_problem(st, h, b, 503, 'timeout')
        assert h.get('retry-after'), 'no Retry-After on a timeout'
        assert srv.healthy(), 'server not healthy after a timeout'
        # Nothing was cached for the killed work: the same request times out
        # again rather than serving a partial image.
        st2, h2, b2 = srv.request('GET', q)
        check_problem(st2, h2, b2, 503, 'timeout')
        # The original is intact.
        st3, h3, b3 = srv.request('GET', '/v1/images/%s' % img['id'])
        assert st3 == 200 and harness.sha256(b3) == img['sha256'], 'original changed'
    finally:
        srv.stop()


if __name__ == '__main__':
    harness.run()
