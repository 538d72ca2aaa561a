#!/usr/bin/env python3
"""End-to-end: asynchronous jobs (DESIGN §3 jobs, §4 the queue).

The DESIGN example job, operations in the given order, 50 concurrent jobs,
?wait= (answers as soon as the job ends, holds no thread), the job list,
cancel of queued and running jobs, Idempotency-Key, validation (400 with
nothing queued, 404), --jobs-max back-pressure, a corrupted blob that fails
at once without a retry, and a kill -9 crash test: every job ends
succeeded, and exactly once (result images counted).

Every result is downloaded and decoded (vipsheader), not only its status."""

import datetime
import json
import os
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Server, test, add_test, corpus, check_problem, describe,  # noqa: E402
                     blob_path, ID_RE, TIME_RE)

LEASE = ['--lease', '2s']

ROCKET = corpus('photos/small-rocket-640x427.jpg')
STORM = corpus('photos/mid-canon-400d-storm-1920x1280.jpg')      # 3:2 landscape
CAR = corpus('photos/12mp-canon-450d-car-4272x2848.jpg')
PORTRAIT = corpus('photos/13mp-canon-5d-portrait-2912x4368.jpg')
LEICA8 = corpus('photos/16mp-leica-t-orient8-4928x3264.jpg')      # upright 3264x4928
BIG = corpus('photos/22mp-canon-5d3-5760x3840.jpg')

FORMAT_SUFFIX = {'jpeg': '.jpg', 'png': '.png', 'webp': '.webp', 'gif': '.gif',
                 'tiff': '.tif', 'avif': '.avif', 'heic': '.heic'}
LOADER_FORMAT = {'jpegload': 'jpeg', 'pngload': 'png', 'webpload': 'webp', 'gifload': 'gif',
                 'tiffload': 'tiff', 'heifload': 'heif'}
FINISHED = ('succeeded', 'failed', 'canceled')
JOB_KEYS = {'id', 'status', 'image_id', 'operations', 'output', 'attempts', 'max_attempts',
            'result_image_id', 'error', 'created_at', 'started_at', 'finished_at'}

# A job that runs for tens of seconds on the ASan build (the 22 MP photo,
# a wide blur): used to keep a --workers 1 server busy, always canceled.
SLOW_OPS = [{'op': 'blur', 'sigma': 50}]

_srv = None
_uploaded = {}


def srv():
    """The shared server (two workers, 2 s lease); a new one if it died."""
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server(LEASE + ['--sweep-interval', '200ms'])
    return _srv


def uploaded(path, s=None):
    s = s or srv()
    key = (id(s), path)
    if key not in _uploaded:
        _uploaded[key] = s.upload_ok(path)
    return _uploaded[key]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def post_job(s, body, headers=None, raw=None, timeout=60.0):
    h = {'Content-Type': 'application/json'}
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body).encode()
    return s.request('POST', '/v1/jobs', body=data, headers=h, timeout=timeout)


def check_job_json(j, ctx=''):
    ctx = ctx + '\n' + json.dumps(j, indent=1)
    assert isinstance(j, dict), 'job JSON is not an object' + ctx
    assert set(j) == JOB_KEYS, 'job JSON keys %s, want %s%s' % (sorted(j), sorted(JOB_KEYS), ctx)
    assert isinstance(j['id'], str) and ID_RE.match(j['id']), 'job id' + ctx
    assert j['status'] in ('queued', 'running') + FINISHED, 'status' + ctx
    assert isinstance(j['attempts'], int) and isinstance(j['max_attempts'], int), ctx
    assert 0 <= j['attempts'] <= j['max_attempts'], 'attempts out of range' + ctx
    for k in ('created_at', 'started_at', 'finished_at'):
        assert j[k] is None or (isinstance(j[k], str) and TIME_RE.match(j[k])), \
            '%s is not null or RFC 3339 ms Z%s' % (k, ctx)
    assert j['created_at'] is not None, 'created_at is null' + ctx
    if j['status'] in FINISHED:
        assert j['finished_at'] is not None, 'a finished job has no finished_at' + ctx
    else:
        assert j['finished_at'] is None, 'an unfinished job has finished_at' + ctx
    if j['status'] == 'succeeded':
        assert isinstance(j['result_image_id'], str) and ID_RE.match(j['result_image_id']), \
            'a succeeded job has no result_image_id' + ctx
        assert j['started_at'] is not None, 'a succeeded job has no started_at' + ctx
    else:
        assert j['result_image_id'] is None, 'result_image_id on a job not succeeded' + ctx
    if j['status'] == 'failed':
        e = j['error']
        assert isinstance(e, dict) and set(e) == {'type', 'detail'}, 'error of a failed job' + ctx
        assert e['type'] in harness.PROBLEM_STATUS, 'error.type is not a contract slug' + ctx
        assert isinstance(e['detail'], str), ctx
    else:
        assert j['error'] is None, 'error shown on a job that is not failed' + ctx
    if j['status'] == 'running':
        assert j['started_at'] is not None, 'a running job has no started_at' + ctx
    return j


def create_job(s, body, headers=None):
    """POSTs a job, asserts 202 + Location + job JSON, returns the job."""
    st, h, b = post_job(s, body, headers)
    assert st == 202, 'POST /v1/jobs %s\n%s' % (json.dumps(body), describe(st, h, b))
    assert h.get('content-type', '').split(';')[0].strip() == 'application/json', \
        describe(st, h, b)
    j = check_job_json(json.loads(b), 'POST /v1/jobs')
    assert h.get('location') == '/v1/jobs/' + j['id'], 'Location %r' % h.get('location')
    assert j['image_id'] == body['image_id'], j
    assert j['operations'] == body['operations'], j
    assert j['output'] == body.get('output'), j
    assert j['status'] in ('queued', 'running') + FINISHED, j
    return j


def get_job(s, job_id, wait=None, timeout=60.0):
    path = '/v1/jobs/' + job_id + ('' if wait is None else '?wait=%s' % wait)
    st, h, b = s.get(path, timeout=timeout)
    assert st == 200, 'GET %s\n%s' % (path, describe(st, h, b))
    return check_job_json(json.loads(b), 'GET ' + path)


def wait_job(s, job_id, timeout=60.0):
    """Waits (with ?wait=) until the job is finished; returns it."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        j = get_job(s, job_id, wait=max(1, min(30, int(left))), timeout=45)
        if j['status'] in FINISHED:
            return j
        assert time.monotonic() < end, 'job %s not finished after %.0f s:\n%s' % (
            job_id, timeout, json.dumps(j, indent=1))


def wait_status(s, job_id, statuses, timeout=30.0):
    j = harness.wait_until(lambda: (lambda x: x if x['status'] in statuses else None)(
        get_job(s, job_id)), timeout, 0.05)
    assert j, 'job %s never became %s within %.0f s: %s' % (
        job_id, '/'.join(statuses), timeout, json.dumps(get_job(s, job_id)))
    return j


def fetch_result(s, image_id, want_w, want_h, want_fmt, ctx=''):
    """Downloads an image, decodes it with vipsheader, checks its size and
    format against the image JSON and the expectation. Returns the probe."""
    st, h, b = s.get('/v1/images/' + image_id)
    assert st == 200, 'result image %s %s\n%s' % (image_id, ctx, describe(st, h, b[:300]))
    info = s.get_json('/v1/images/%s/info' % image_id)
    p = harness.decode_check(b, FORMAT_SUFFIX.get(want_fmt, '.bin'))
    got_fmt = LOADER_FORMAT.get(p['loader'], p['loader'])
    assert got_fmt == want_fmt or (want_fmt in ('avif', 'heic') and got_fmt == 'heif'), \
        'result %s decodes as %s, want %s %s' % (image_id, p['loader'], want_fmt, ctx)
    assert (p['width'], p['height']) == (want_w, want_h), \
        'result %s decodes as %dx%d, want %dx%d %s' % (image_id, p['width'], p['height'],
                                                       want_w, want_h, ctx)
    assert (info['width'], info['height'], info['format']) == (want_w, want_h, want_fmt), \
        'result %s info %s, want %dx%d %s %s' % (image_id, info, want_w, want_h, want_fmt, ctx)
    assert info['bytes'] == len(b) and info['sha256'] == harness.sha256(b), (info, ctx)
    return p


def list_all(s, path, page=1000):
    """Every item of a paged list (follows next_cursor)."""
    items, cursor, pages = [], None, 0
    while True:
        q = 'limit=%d' % page + ('&cursor=' + urllib.parse.quote(cursor) if cursor else '')
        sep = '&' if '?' in path else '?'
        st, h, b = s.get(path + sep + q)
        assert st == 200, 'GET %s%s%s\n%s' % (path, sep, q, describe(st, h, b))
        doc = json.loads(b)
        assert set(doc) == {'items', 'next_cursor'}, doc
        items.extend(doc['items'])
        cursor = doc['next_cursor']
        pages += 1
        assert pages < 1000, 'list does not end'
        if not cursor:
            return items


def image_ids(s):
    return [i['id'] for i in list_all(s, '/v1/images')]


def job_ids(s, status=None):
    return [j['id'] for j in list_all(s, '/v1/jobs' + ('?status=' + status if status else ''))]


def parse_time(t):
    return datetime.datetime.strptime(t, '%Y-%m-%dT%H:%M:%S.%fZ').replace(
        tzinfo=datetime.timezone.utc).timestamp()


def cancel(s, job_id, expect=200):
    st, h, b = s.request('DELETE', '/v1/jobs/' + job_id)
    if expect != 200:
        return check_problem(st, h, b, expect)
    assert st == 200, 'DELETE /v1/jobs/%s\n%s' % (job_id, describe(st, h, b))
    return check_job_json(json.loads(b), 'DELETE')


def resized(w, h, width):
    """Height libvips gives when w x h is resized to width (aspect kept)."""
    return int(round(h * width / w))


# ---------------------------------------------------------------------------
# success paths
# ---------------------------------------------------------------------------

@test
def design_example_job_succeeds_with_a_600x800_webp():
    s = srv()
    img = uploaded(CAR)
    body = {'image_id': img['id'],
            'operations': [{'op': 'resize', 'width': 800, 'height': 600, 'fit': 'cover'},
                           {'op': 'rotate', 'angle': 90}],
            'output': {'format': 'webp', 'quality': 80}}
    before = set(image_ids(s))
    j = create_job(s, body)
    if j['status'] == 'queued':
        assert j['attempts'] == 0 and j['started_at'] is None, j
    assert j['max_attempts'] == 3, 'default --max-attempts is 3: %s' % j
    j = wait_job(s, j['id'])
    assert j['status'] == 'succeeded', json.dumps(j, indent=1)
    assert j['attempts'] == 1, j
    assert parse_time(j['created_at']) <= parse_time(j['started_at']) <= \
        parse_time(j['finished_at']), j
    fetch_result(s, j['result_image_id'], 600, 800, 'webp', '(DESIGN example)')
    after = image_ids(s)
    assert set(after) - before == {j['result_image_id']}, \
        'the result is not listed in GET /v1/images (new ids: %s)' % (set(after) - before)
    assert after[0] == j['result_image_id'], 'the result is not the newest image'
    assert img['id'] in after, 'the source image is gone'


@test
def operations_run_in_the_order_given():
    s = srv()
    img = uploaded(STORM)
    w, h = img['width'], img['height']
    assert w * 2 == h * 3, 'not a 3:2 landscape: %s' % img
    a = create_job(s, {'image_id': img['id'],
                       'operations': [{'op': 'resize', 'width': 400},
                                      {'op': 'rotate', 'angle': 90}]})
    b = create_job(s, {'image_id': img['id'],
                       'operations': [{'op': 'rotate', 'angle': 90},
                                      {'op': 'resize', 'width': 400}]})
    a, b = wait_job(s, a['id']), wait_job(s, b['id'])
    assert a['status'] == 'succeeded' and b['status'] == 'succeeded', (a, b)
    # resize then rotate: 400 x h' -> h' x 400 (267x400 for 3:2)
    fetch_result(s, a['result_image_id'], resized(w, h, 400), 400, 'jpeg', '(resize, rotate)')
    # rotate then resize: h x w -> 400 x (w*400/h) (400x600 for 3:2)
    fetch_result(s, b['result_image_id'], 400, resized(h, w, 400), 'jpeg', '(rotate, resize)')


@test
def output_only_job_and_a_chain_of_every_op():
    s = srv()
    img = uploaded(ROCKET)
    j = create_job(s, {'image_id': img['id'], 'operations': [], 'output': {'format': 'png'}})
    j = wait_job(s, j['id'])
    assert j['status'] == 'succeeded', j
    fetch_result(s, j['result_image_id'], 640, 427, 'png', '(output only)')
    ops = [{'op': 'crop', 'x': 20, 'y': 10, 'width': 600, 'height': 400},
           {'op': 'resize', 'width': 300, 'height': 300, 'fit': 'contain', 'enlarge': False,
            'gravity': 'centre'},
           {'op': 'rotate', 'angle': 270, 'background': 'ff0000'},
           {'op': 'flip', 'direction': 'horizontal'},
           {'op': 'blur', 'sigma': 1.5},
           {'op': 'sharpen', 'sigma': 1}]
    j = create_job(s, {'image_id': img['id'], 'operations': ops,
                       'output': {'format': 'webp', 'quality': 60, 'strip': True}})
    j = wait_job(s, j['id'])
    assert j['status'] == 'succeeded', j
    fetch_result(s, j['result_image_id'], 300, 300, 'webp', '(every op)')


@test
def fifty_jobs_posted_concurrently_all_succeed():
    s = srv()
    img = uploaded(ROCKET)
    n = 50
    barrier = threading.Barrier(n)
    posted = [None] * n
    errors = []

    def post(i):
        try:
            barrier.wait(20)
            posted[i] = post_job(s, {'image_id': img['id'],
                                     'operations': [{'op': 'resize', 'width': 100 + i}]},
                                 timeout=60)
        except Exception as e:
            errors.append('job %d: %r' % (i, e))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    refused = [(i, r) for i, r in enumerate(posted) if r[0] != 202]
    assert not refused, \
        '%d of %d concurrent POST /v1/jobs not 202 (statuses %s); the first:\n%s' % (
            len(refused), n, sorted({r[0] for _, r in refused}), describe(*refused[0][1]))
    jobs = [check_job_json(json.loads(b)) for st, h, b in posted]
    assert len({j['id'] for j in jobs}) == n, 'job ids are not distinct'
    done = [wait_job(s, j['id'], 90) for j in jobs]
    bad = [j for j in done if j['status'] != 'succeeded']
    assert not bad, '%d of %d jobs did not succeed, e.g.\n%s' % (
        len(bad), n, json.dumps(bad[0], indent=1))
    results = [j['result_image_id'] for j in done]
    assert len(set(results)) == n, '%d distinct result images for %d jobs' % (
        len(set(results)), n)
    assert all(j['attempts'] == 1 for j in done), [j['attempts'] for j in done]
    for i, j in enumerate(done):
        fetch_result(s, j['result_image_id'], 100 + i, resized(640, 427, 100 + i), 'jpeg',
                     '(job %d of 50)' % i)
    listed = set(image_ids(s))
    missing = set(results) - listed
    assert not missing, '%d results not in GET /v1/images' % len(missing)


@test
def wait_returns_as_soon_as_the_job_ends():
    s = srv()
    img = uploaded(BIG)
    body = {'image_id': img['id'],
            'operations': [{'op': 'resize', 'width': 2000}, {'op': 'sharpen', 'sigma': 1}]}
    j = create_job(s, body)
    t0 = time.monotonic()
    j = get_job(s, j['id'], wait=10, timeout=30)
    took = time.monotonic() - t0
    answered = time.time()
    assert j['status'] == 'succeeded', j
    assert took < 8, 'wait=10 on a job of %.2f s answered after %.2f s' % (
        parse_time(j['finished_at']) - parse_time(j['started_at']), took)
    lag = answered - parse_time(j['finished_at'])
    assert lag < 1.0, 'the answer came %.2f s after the job finished' % lag
    fetch_result(s, j['result_image_id'], 2000, resized(5760, 3840, 2000), 'jpeg')
    # a wait on a finished job answers at once
    t0 = time.monotonic()
    j2 = get_job(s, j['id'], wait=30)
    took = time.monotonic() - t0
    assert took < 1.0, 'wait=30 on a finished job took %.2f s' % took
    assert j2 == j, (j, j2)
    # wait=0 is a plain GET
    assert get_job(s, j['id'], wait=0) == j


@test
def wait_out_of_range_is_400_and_unknown_job_is_404():
    s = srv()
    img = uploaded(ROCKET)
    j = create_job(s, {'image_id': img['id'], 'operations': [{'op': 'flip',
                                                              'direction': 'vertical'}]})
    for bad in ('31', 'abc', '-1', '', '1.5', '1e1', '100000000000000000000'):
        st, h, b = s.get('/v1/jobs/%s?wait=%s' % (j['id'], bad))
        check_problem(st, h, b, 400, 'invalid-operation')
    for unknown in ('AAAAAAAAAAAAAAAAAAAAAA', 'nope', 'x' * 200):
        st, h, b = s.get('/v1/jobs/' + unknown)
        check_problem(st, h, b, 404, 'not-found')
        st, h, b = s.get('/v1/jobs/%s?wait=2' % unknown)
        check_problem(st, h, b, 404, 'not-found')
        cancel(s, unknown, expect=404)
    assert wait_job(s, j['id'])['status'] == 'succeeded'


@test
def job_list_is_newest_first_with_status_filter_and_cursor():
    s = srv()
    img = uploaded(ROCKET)
    mine = []
    for i in range(5):
        mine.append(create_job(s, {'image_id': img['id'],
                                   'operations': [{'op': 'resize', 'width': 50 + i}]})['id'])
    for jid in mine:
        wait_job(s, jid)
    # paged two at a time, newest first
    items = list_all(s, '/v1/jobs', page=2)
    ids = [j['id'] for j in items]
    assert len(ids) == len(set(ids)), 'a job appears twice across pages'
    assert [i for i in ids if i in mine] == list(reversed(mine)), 'list is not newest first'
    for j in items:
        check_job_json(j, 'list item')
    created = [parse_time(j['created_at']) for j in items]
    assert created == sorted(created, reverse=True), 'created_at not descending'
    succeeded = list_all(s, '/v1/jobs?status=succeeded')
    assert succeeded and all(j['status'] == 'succeeded' for j in succeeded), \
        [j['status'] for j in succeeded]
    assert set(mine) <= {j['id'] for j in succeeded}
    for st_name in ('queued', 'running', 'failed', 'canceled'):
        assert all(j['status'] == st_name for j in list_all(s, '/v1/jobs?status=' + st_name))
    for q in ('status=done', 'limit=0', 'limit=1001', 'limit=x', 'cursor=garbage!', 'bogus=1'):
        st, h, b = s.get('/v1/jobs?' + q)
        check_problem(st, h, b, 400, 'invalid-operation')


# ---------------------------------------------------------------------------
# a single busy worker: ?wait= holds no thread, cancel, back-pressure
# ---------------------------------------------------------------------------

def busy_server(extra=()):
    """A --workers 1 server whose worker is busy with a slow job (returned)."""
    s = Server(LEASE + ['--workers', '1', '--sweep-interval', '200ms'] + list(extra))
    big = s.upload_ok(BIG)
    slow = create_job(s, {'image_id': big['id'], 'operations': SLOW_OPS})
    slow = wait_status(s, slow['id'], ('running',), 20)
    assert slow['attempts'] == 1, slow
    return s, big, slow


@test
def wait_holds_no_thread_and_a_cancel_wakes_the_waiters():
    s, big, slow = busy_server()
    small = s.upload_ok(ROCKET)
    queued = create_job(s, {'image_id': small['id'],
                            'operations': [{'op': 'resize', 'width': 64}]})
    assert get_job(s, queued['id'])['status'] == 'queued'
    # a wait that runs out answers with the job as it is
    t0 = time.monotonic()
    j = get_job(s, queued['id'], wait=1)
    took = time.monotonic() - t0
    assert j['status'] == 'queued' and 0.9 <= took < 3.0, (j['status'], took)

    n = 20
    answers = [None] * n
    times = [None] * n

    def waiter(i):
        t = time.monotonic()
        try:
            answers[i] = s.get('/v1/jobs/%s?wait=10' % queued['id'], timeout=30)
        except Exception as e:
            answers[i] = ('error', repr(e), b'')
        times[i] = time.monotonic() - t

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # all parked
    slowest = 0.0
    for _ in range(5):
        t = time.monotonic()
        assert s.healthy(timeout=5), 'GET /healthz failed while %d requests wait' % n
        st, h, b = s.get('/v1/jobs/' + slow['id'])
        assert st == 200 and json.loads(b)['status'] == 'running', describe(st, h, b)
        slowest = max(slowest, time.monotonic() - t)
    assert slowest < 1.0, 'GET /healthz + GET job took %.2f s while %d requests wait' % (
        slowest, n)
    assert all(a is None for a in answers), 'a ?wait=10 answered before the job ended'
    t_cancel = time.monotonic()
    c = cancel(s, queued['id'])
    assert c['status'] == 'canceled' and c['finished_at'], c
    for t in threads:
        t.join(30)
    woke = time.monotonic() - t_cancel
    for i, a in enumerate(answers):
        assert a is not None and a[0] == 200, 'waiter %d: %s' % (i, a)
        assert json.loads(a[2])['status'] == 'canceled', a[2]
    assert woke < 3.0, 'waiters answered %.2f s after the cancel (wait was 10 s)' % woke
    assert max(times) < 8.0, 'waiters took up to %.2f s' % max(times)
    cancel(s, slow['id'])
    s.stop()


@test
def cancel_a_queued_and_a_running_job():
    s, big, slow = busy_server()
    small = s.upload_ok(ROCKET)
    images_before = image_ids(s)
    queued = create_job(s, {'image_id': small['id'],
                            'operations': [{'op': 'resize', 'width': 32}]})
    assert get_job(s, queued['id'])['status'] == 'queued'

    # queued -> canceled at once, never run
    c = cancel(s, queued['id'])
    assert c['id'] == queued['id'] and c['status'] == 'canceled', c
    assert c['finished_at'] is not None and c['started_at'] is None, c
    assert c['attempts'] == 0 and c['result_image_id'] is None, c
    cancel(s, queued['id'], expect=409)

    # running -> canceled at once; the worker stops at its next heartbeat
    slow_now = get_job(s, slow['id'])
    assert slow_now['status'] == 'running', slow_now
    t0 = time.time()
    c = cancel(s, slow['id'])
    assert c['status'] == 'canceled' and c['finished_at'] is not None, c
    assert abs(parse_time(c['finished_at']) - t0) < 2.0, 'finished_at is not now: %s' % c
    assert c['result_image_id'] is None, c
    cancel(s, slow['id'], expect=409)

    # the worker is free again soon (the blur was killed, not finished):
    # a new job behind it runs within a few heartbeats, not in tens of seconds
    t0 = time.monotonic()
    after = create_job(s, {'image_id': small['id'],
                           'operations': [{'op': 'resize', 'width': 48}]})
    after = wait_job(s, after['id'], 30)
    took = time.monotonic() - t0
    assert after['status'] == 'succeeded', after
    assert took < 6.0, 'the next job waited %.1f s: the canceled job kept the worker' % took
    fetch_result(s, after['result_image_id'], 48, resized(640, 427, 48), 'jpeg')

    time.sleep(2.0)  # > lease: any late completion or rescue would show now
    for jid in (queued['id'], slow['id']):
        j = get_job(s, jid)
        assert j['status'] == 'canceled' and j['result_image_id'] is None, j
    assert get_job(s, slow['id'])['attempts'] == 1, 'the canceled job was claimed again'
    assert get_job(s, queued['id'])['attempts'] == 0, 'the canceled queued job was claimed'
    now = image_ids(s)
    extra = set(now) - set(images_before)
    assert extra == {after['result_image_id']}, \
        'images appeared besides the one result: %s' % (extra - {after['result_image_id']})
    canceled = set(job_ids(s, 'canceled'))
    assert {queued['id'], slow['id']} <= canceled
    assert slow['id'] not in job_ids(s, 'running')
    assert 'lease lost' in s.log() or 'stopping' in s.log(), \
        'no log line shows the worker stopping the canceled job'
    # a finished job (succeeded) cannot be canceled either
    cancel(s, after['id'], expect=409)
    s.stop()


@test
def jobs_max_answers_503_with_retry_after_and_drops_nothing():
    s, big, slow = busy_server(['--jobs-max', '2'])
    small = s.upload_ok(ROCKET)
    accepted = []
    refused = None
    for i in range(6):
        st, h, b = post_job(s, {'image_id': small['id'],
                                'operations': [{'op': 'resize', 'width': 20 + i}]})
        if st == 202:
            accepted.append(json.loads(b))
            continue
        refused = (st, h, b)
        break
    assert refused is not None, 'no 503 after %d queued jobs with --jobs-max 2' % len(accepted)
    assert len(accepted) == 2, '%d jobs accepted before the 503 with --jobs-max 2' % len(
        accepted)
    st, h, b = refused
    check_problem(st, h, b, 503, 'overloaded')
    ra = h.get('retry-after')
    assert ra is not None and ra.isdigit() and int(ra) >= 1, 'Retry-After %r' % ra
    # the refused job left nothing behind
    listed = job_ids(s)
    assert len(listed) == 3, 'jobs listed: %d (want the slow one and 2 accepted)' % len(listed)
    # free the worker: everything accepted still runs
    cancel(s, slow['id'])
    for a in accepted:
        j = wait_job(s, a['id'], 30)
        assert j['status'] == 'succeeded', j
        w = j['operations'][0]['width']
        fetch_result(s, j['result_image_id'], w, resized(640, 427, w), 'jpeg')
    j = create_job(s, {'image_id': small['id'], 'operations': [{'op': 'resize', 'width': 30}]})
    assert wait_job(s, j['id'])['status'] == 'succeeded'
    s.stop()


# ---------------------------------------------------------------------------
# validation and idempotency
# ---------------------------------------------------------------------------

@test
def idempotency_key_replays_the_first_job_and_conflicts_on_another_body():
    s = srv()
    img = uploaded(ROCKET)
    key = 'e2e-%d' % time.time_ns()
    body = {'image_id': img['id'], 'operations': [{'op': 'resize', 'width': 77}]}
    first = create_job(s, body, headers={'Idempotency-Key': key})
    before = job_ids(s)
    for _ in range(2):
        st, h, b = post_job(s, body, headers={'Idempotency-Key': key})
        assert st == 200, 'replay with the same key and body\n' + describe(st, h, b)
        again = check_job_json(json.loads(b))
        assert again['id'] == first['id'], (first, again)
        assert h.get('location') == '/v1/jobs/' + first['id'], h.get('location')
    # the job as it is now
    done = wait_job(s, first['id'])
    st, h, b = post_job(s, body, headers={'Idempotency-Key': key})
    assert st == 200, describe(st, h, b)
    assert json.loads(b) == done, (json.loads(b), done)
    # another body with the same key
    other = {'image_id': img['id'], 'operations': [{'op': 'resize', 'width': 78}]}
    st, h, b = post_job(s, other, headers={'Idempotency-Key': key})
    check_problem(st, h, b, 409, 'conflict')
    assert job_ids(s) == before, 'a replay or a conflict queued a job'
    # the same body under another key is a new job
    j2 = create_job(s, body, headers={'Idempotency-Key': key + '-2'})
    assert j2['id'] != first['id']
    j2 = wait_job(s, j2['id'])
    assert j2['result_image_id'] != done['result_image_id']
    fetch_result(s, done['result_image_id'], 77, resized(640, 427, 77), 'jpeg')


@test
def bad_jobs_are_400_and_queue_nothing():
    s = srv()
    img = uploaded(ROCKET)
    iid = img['id']

    def job(ops, output=None, **extra):
        d = {'image_id': iid, 'operations': ops}
        if output is not None:
            d['output'] = output
        d.update(extra)
        return json.dumps(d).encode()

    cases = [
        ('unknown op', job([{'op': 'explode'}])),
        ('op without op', job([{'width': 100}])),
        ('unknown key in an op', job([{'op': 'resize', 'width': 100, 'colour': 'red'}])),
        ('unknown top-level key', job([{'op': 'resize', 'width': 100}], priority=1)),
        ('unknown key in output', job([], {'format': 'png', 'speed': 3})),
        ('width 0', job([{'op': 'resize', 'width': 0}])),
        ('width 100001', job([{'op': 'resize', 'width': 100001}])),
        ('width as a string', job([{'op': 'resize', 'width': '100'}])),
        ('width as a float', job([{'op': 'resize', 'width': 100.5}])),
        ('width as a boolean', job([{'op': 'resize', 'width': True}])),
        ('bad fit', job([{'op': 'resize', 'width': 100, 'fit': 'squash'}])),
        ('bad gravity', job([{'op': 'resize', 'width': 100, 'height': 10, 'fit': 'cover',
                              'gravity': 'up'}])),
        ('enlarge not a boolean', job([{'op': 'resize', 'width': 100, 'enlarge': 1}])),
        ('strip not a boolean', job([], {'format': 'png', 'strip': 1})),
        ('angle out of range', job([{'op': 'rotate', 'angle': 361}])),
        ('bad background', job([{'op': 'rotate', 'angle': 45, 'background': 'blue!'}])),
        ('bad flip direction', job([{'op': 'flip', 'direction': 'diagonal'}])),
        ('blur sigma too small', job([{'op': 'blur', 'sigma': 0.1}])),
        ('blur sigma too large', job([{'op': 'blur', 'sigma': 101}])),
        ('sharpen sigma too large', job([{'op': 'sharpen', 'sigma': 11}])),
        ('crop without height', job([{'op': 'crop', 'x': 0, 'y': 0, 'width': 10}])),
        ('bad format', job([], {'format': 'bmp'})),
        ('quality 0', job([], {'format': 'jpeg', 'quality': 0})),
        ('quality 101', job([], {'format': 'jpeg', 'quality': 101})),
        ('operations not an array', job({'op': 'resize', 'width': 100})),
        ('an op not an object', job(['resize'])),
        ('output not an object', job([], 'png')),
        ('operations missing', json.dumps({'image_id': iid}).encode()),
        ('image_id missing', json.dumps({'operations': [{'op': 'flip',
                                                         'direction': 'vertical'}]}).encode()),
        ('image_id not a string', json.dumps({'image_id': 5, 'operations': []}).encode()),
        ('a job that does nothing', job([])),
        ('a job that does nothing (output null)',
         json.dumps({'image_id': iid, 'operations': [], 'output': None}).encode()),
        ('invalid JSON', b'{"image_id": "' + iid.encode() + b'", "operations": [}'),
        ('truncated JSON', job([{'op': 'resize', 'width': 100}])[:-3]),
        ('duplicate key', b'{"image_id": "%s", "image_id": "%s", "operations": []}' % (
            iid.encode(), iid.encode())),
        ('JSON array body', b'[]'),
        ('JSON string body', b'"hello"'),
        ('empty body', b''),
    ]
    before = job_ids(s)
    images_before = image_ids(s)
    problems = []
    for name, raw in cases:
        st, h, b = post_job(s, None, raw=raw)
        try:
            check_problem(st, h, b, 400, 'invalid-operation')
        except AssertionError as e:
            problems.append('%s (%r): %s' % (name, raw[:120], str(e).split('\n')[0] +
                                             ' ' + describe(st, h, b, 200)))
    assert not problems, '%d bad jobs not refused with 400:\n%s' % (len(problems),
                                                                     '\n'.join(problems))
    time.sleep(0.3)
    assert job_ids(s) == before, 'a refused job was queued'
    # and the same parser accepts a well-formed job
    ok = create_job(s, {'image_id': iid, 'operations': [
        {'op': 'resize', 'width': 100, 'enlarge': False}], 'output': {'strip': True}})
    assert wait_job(s, ok['id'])['status'] == 'succeeded'
    assert len(image_ids(s)) == len(images_before) + 1


@test
def unknown_image_is_404_and_queues_nothing():
    s = srv()
    before = job_ids(s)
    for iid in ('AAAAAAAAAAAAAAAAAAAAAA', 'no-such-image', '../../etc/passwd', ''):
        st, h, b = post_job(s, {'image_id': iid, 'operations': [{'op': 'rotate',
                                                                 'angle': 90}]})
        check_problem(st, h, b, 404, 'not-found')
    # a deleted image is unknown too
    gone = s.upload_ok(harness.make_png(seed=5, text='deleted before the job'), 'image/png')
    st, h, b = s.request('DELETE', '/v1/images/' + gone['id'])
    assert st == 204, describe(st, h, b)
    st, h, b = post_job(s, {'image_id': gone['id'], 'operations': [{'op': 'rotate',
                                                                    'angle': 90}]})
    check_problem(st, h, b, 404, 'not-found')
    assert job_ids(s) == before, 'a 404 job was queued'


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------

def corrupt_truncate(path, data):
    """Cuts the blob in half: headers intact, image data truncated."""
    with open(path, 'r+b') as f:
        f.truncate(len(data) // 2)


def corrupt_garbage_after_header(path, data):
    """Keeps the first 33 bytes (PNG signature + IHDR), random bytes after."""
    with open(path, 'r+b') as f:
        f.seek(33)
        f.write(os.urandom(len(data) - 33))


def corrupt_all_garbage(path, data):
    """Overwrites the whole blob with bytes that are no image at all."""
    with open(path, 'wb') as f:
        f.write(b'\x00garbage' + os.urandom(len(data) - 8))


_corrupt_srv = None


def corrupt_srv():
    global _corrupt_srv
    if _corrupt_srv is None or not _corrupt_srv.alive():
        _corrupt_srv = Server(LEASE + ['--sweep-interval', '200ms'])
    return _corrupt_srv


def corrupted_blob_test(source, corrupt):
    """A job on an image whose stored blob was corrupted on disk (after a
    good upload) fails at once, /problems/invalid-image, attempts 1, no
    retry, no result stored; the server keeps working."""
    def fn():
        s = corrupt_srv()
        data = source() if callable(source) else harness.read_bytes(source)
        img = s.upload_ok(data, harness.content_type_for_path(source)
                          if isinstance(source, str) else 'image/png')
        p = blob_path(s.blobs_dir, img['sha256'])
        assert os.path.isfile(p), 'no blob file at %s' % p
        os.chmod(p, 0o644)
        corrupt(p, data)
        images_before = image_ids(s)
        t0 = time.monotonic()
        j = create_job(s, {'image_id': img['id'], 'operations': [{'op': 'resize', 'width': 100}]})
        j = wait_job(s, j['id'], 30)
        took = time.monotonic() - t0
        what = json.dumps(j, indent=1)
        assert j['status'] == 'failed', 'status %s, want failed\n%s' % (j['status'], what)
        assert j['error']['type'] == '/problems/invalid-image', \
            'error.type %s, want /problems/invalid-image\n%s' % (j['error']['type'], what)
        assert j['attempts'] == 1, 'attempts %d, want 1 (no retry)\n%s' % (j['attempts'], what)
        assert took < 5, 'failed only after %.1f s, not at once' % took
        time.sleep(1.0)  # a retry would show now (backoff after attempt 1 is at most 2 s)
        j2 = get_job(s, j['id'])
        assert j2 == j, 'the failed job changed (retried?)\n%s' % json.dumps(j2, indent=1)
        assert image_ids(s) == images_before, 'a failed job stored an image'
        assert j['id'] in job_ids(s, 'failed')
        # the server is fine: a job on a healthy image still succeeds
        ok = s.upload_ok(ROCKET)
        j = create_job(s, {'image_id': ok['id'], 'operations': [{'op': 'resize', 'width': 99}]})
        j = wait_job(s, j['id'])
        assert j['status'] == 'succeeded', j
        fetch_result(s, j['result_image_id'], 99, resized(640, 427, 99), 'jpeg')
    return fn


add_test('corrupted blob (truncated JPEG) fails at once with invalid-image, no retry',
         corrupted_blob_test(STORM, corrupt_truncate))
add_test('corrupted blob (PNG, garbage after the header) fails at once with invalid-image',
         corrupted_blob_test(lambda: harness.make_png(200, 150, seed=9, text='corrupt me'),
                             corrupt_garbage_after_header))
add_test('corrupted blob (GIF overwritten with garbage) fails at once with invalid-image',
         corrupted_blob_test(corpus('formats/car-animated-8frames.gif'), corrupt_all_garbage))


# ---------------------------------------------------------------------------
# crash
# ---------------------------------------------------------------------------

@test
def kill_9_while_jobs_run_then_restart_all_20_succeed_exactly_once():
    flags = LEASE + ['--sweep-interval', '200ms']
    s = Server(flags)
    sources = [s.upload_ok(p) for p in (LEICA8, BIG, CAR, PORTRAIT)]
    originals = set(image_ids(s))
    assert len(originals) == len(sources)
    jobs = []
    for i in range(20):
        src = sources[i % len(sources)]
        jobs.append(create_job(s, {'image_id': src['id'],
                                   'operations': [{'op': 'resize', 'width': 2000},
                                                  {'op': 'sharpen', 'sigma': 1 + (i % 3)}]}))
    ids = [j['id'] for j in jobs]

    def snapshot(srv_):
        return {j['id']: j for j in list_all(srv_, '/v1/jobs') if j['id'] in set(ids)}

    # wait until some are running and a few have finished, then kill -9
    seen = harness.wait_until(
        lambda: (lambda snap: snap if any(j['status'] == 'running' for j in snap.values()) and
                 sum(j['status'] == 'succeeded' for j in snap.values()) >= 2 else None)(
            snapshot(s)), 60, 0.05)
    assert seen, 'never saw a job running with two finished: %s' % sorted(
        j['status'] for j in snapshot(s).values())
    s.kill9()
    running_at_kill = sorted(k for k, j in seen.items() if j['status'] == 'running')
    done_at_kill = sum(j['status'] == 'succeeded' for j in seen.values())
    harness._diag('at the kill: %d succeeded, %d running' % (done_at_kill,
                                                             len(running_at_kill)))
    assert done_at_kill < 20, 'every job had finished before the kill'

    s2 = Server(flags, data_dir=s.data_dir)
    end = time.monotonic() + 90
    while True:
        snap = snapshot(s2)
        if len(snap) == 20 and all(j['status'] in FINISHED for j in snap.values()):
            break
        assert time.monotonic() < end, 'not all 20 jobs finished 90 s after the restart: %s' % (
            sorted((j['status'], j['attempts']) for j in snap.values()))
        time.sleep(0.2)
    assert len(snap) == 20, 'jobs lost: %d of 20 listed' % len(snap)
    bad = [j for j in snap.values() if j['status'] != 'succeeded']
    assert not bad, '%d jobs did not succeed:\n%s' % (len(bad), '\n'.join(
        json.dumps(j) for j in bad))
    for j in snap.values():
        check_job_json(j)
        assert 1 <= j['attempts'] <= j['max_attempts'], j
    assert any(j['attempts'] >= 2 for j in snap.values()), \
        'no job was claimed again after the kill (a running one should have been)'
    assert not job_ids(s2, 'running') and not job_ids(s2, 'queued'), \
        'jobs left running/queued'

    results = [j['result_image_id'] for j in snap.values()]
    assert len(set(results)) == 20, '%d distinct results for 20 jobs' % len(set(results))
    listed = image_ids(s2)
    assert len(listed) == len(set(listed)), 'an image is listed twice'
    extra = set(listed) - originals
    assert originals <= set(listed), 'an original image was lost'
    assert len(extra) == 20, '%d images besides the %d originals, want 20 (one per job)' % (
        len(extra), len(originals))
    assert extra == set(results), 'the extra images are not the jobs\' results'
    by_id = {src['id']: src for src in sources}
    for j in snap.values():
        src = by_id[j['image_id']]
        fetch_result(s2, j['result_image_id'], 2000, resized(src['width'], src['height'], 2000),
                     'jpeg', '(job %s after the crash)' % j['id'])
    s2.stop()


if __name__ == '__main__':
    harness.run()
