"""Database faults (issue: scale out): PostgreSQL is restarted, and then
crashes (immediate stop) and comes back, during a stream of uploads and
jobs through `api` and `worker` processes. The processes recover by
themselves; every upload that got 201 and every job that got 202 is there
afterwards; while the database is away /readyz is 503 and requests get a
clean 503 problem+json.

It restarts the database, so it runs on a PostgreSQL of its own: it starts
itself again under scripts/with-postgres (other tests keep theirs)."""

import json
import os
import sys

if os.environ.get('IMAGE_SERVER_PG_FAULTS_OWN') != '1':
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('IMAGE_SERVER_TEST_PG') and not k.startswith('PG_')}
    env['IMAGE_SERVER_PG_FAULTS_OWN'] = '1'
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(os.path.dirname(os.path.dirname(here)), 'scripts', 'with-postgres')
    sys.stdout.flush()
    os.execve(script, [script, sys.executable, os.path.abspath(__file__)], env)

import threading  # noqa: E402
import time  # noqa: E402

import harness  # noqa: E402
from harness import test, describe  # noqa: E402
import pgfleet  # noqa: E402
from pgfleet import Api, Worker, psql  # noqa: E402


class Stream:
    """Uploads (distinct PNGs) and jobs in a loop on their own threads,
    recording every acknowledgement and every refusal."""

    def __init__(self, api, source_id):
        self.api = api
        self.source_id = source_id
        self.stop = threading.Event()
        self.uploads = {}      # id -> bytes, for every 201
        self.jobs = []         # ids, for every 202
        self.refusals = {}     # "status type" -> count
        self.broken = []       # answers that were not 201/202/503 problem+json
        self.lock = threading.Lock()
        self.seed = 0

    def note(self, st, h, b):
        if st == 503:
            try:
                p = json.loads(b)
                ok = (h.get('content-type', '').startswith('application/problem+json')
                      and p.get('status') == 503)
            except ValueError:
                ok = False
            if ok:
                key = '503 ' + p.get('type', '?')
                with self.lock:
                    self.refusals[key] = self.refusals.get(key, 0) + 1
                return
        with self.lock:
            self.broken.append(describe(st, h, b, limit=300))

    def uploads_loop(self):
        while not self.stop.is_set():
            with self.lock:
                self.seed += 1
                seed = self.seed
            data = harness.make_png(48, 32, seed=seed)
            try:
                st, h, b = self.api.upload(data, 'image/png', timeout=30)
            except OSError as e:
                with self.lock:
                    self.broken.append('upload: connection error %r' % e)
                continue
            if st == 201:
                with self.lock:
                    self.uploads[json.loads(b)['id']] = data
            else:
                self.note(st, h, b)
                time.sleep(0.05)

    def jobs_loop(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps({'image_id': self.source_id,
                               'operations': [{'op': 'resize', 'width': 16 + n % 40}],
                               'output': {'format': 'png'}}).encode()
            try:
                st, h, b = self.api.request('POST', '/v1/jobs', body=body,
                                            headers={'Content-Type': 'application/json'},
                                            timeout=30)
            except OSError as e:
                with self.lock:
                    self.broken.append('job: connection error %r' % e)
                continue
            if st == 202:
                with self.lock:
                    self.jobs.append(json.loads(b)['id'])
            else:
                self.note(st, h, b)
                time.sleep(0.05)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.uploads_loop, daemon=True),
                        threading.Thread(target=self.uploads_loop, daemon=True),
                        threading.Thread(target=self.jobs_loop, daemon=True)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def ready(proc):
    try:
        st, _, _ = proc.get('/readyz', timeout=10)
        return st
    except OSError:
        return None


@test
def database_restart_and_crash_during_uploads_and_jobs():
    pgfleet.require_pg()
    url = pgfleet.new_database('faults')
    pgfleet.migrate(url)
    # Attempts: each outage may cost a running job one (DESIGN §4: a
    # database error is retried); two outages fit in five.
    api = Api(url, 'db', ['--max-attempts', '5'])
    workers = [Worker(url, 'db', ['--workers', '1', '--lease', '3s', '--sweep-interval', '300ms'])
               for _ in range(2)]
    src = api.upload_ok(harness.corpus('photos/small-rocket-640x427.jpg'))

    with Stream(api, src['id']) as s:
        time.sleep(2)
        n0 = (len(s.uploads), len(s.jobs))
        assert n0[0] > 0 and n0[1] > 0, 'nothing acknowledged before the fault: %s %s' % (
            n0, s.broken[:3])
        # 1. A clean restart.
        pgfleet.pg_ctl('restart', '-m', 'fast', '-w')
        time.sleep(3)
        n1 = (len(s.uploads), len(s.jobs))
        assert n1[0] > n0[0] and n1[1] > n0[1], (
            'no new acknowledgements after the restart: %s -> %s' % (n0, n1))
        # 2. A crash: the database is gone for a while.
        pgfleet.pg_ctl('stop', '-m', 'immediate', '-w')
        time.sleep(1.5)
        down = (ready(api), ready(workers[0]))
        st, h, b = api.upload(harness.make_png(20, 20, seed=999999), 'image/png')
        down_upload = (st, h, b)
        st, h, b = api.get('/v1/images/%s' % src['id'])
        down_get = (st, h, b)
        pgfleet.pg_ctl('start', '-w', '-l', os.environ['IMAGE_SERVER_TEST_PG_LOG'])
        # The processes find the database again by themselves.
        assert harness.wait_until(lambda: ready(api) == 200, 30), 'api never ready again'
        assert harness.wait_until(lambda: ready(workers[0]) == 200, 30), 'worker never ready'
        time.sleep(3)
        n2 = (len(s.uploads), len(s.jobs))
    assert down == (503, 503), '/readyz while the database was down: api %s, worker %s' % down
    harness.check_problem(*down_upload, 503, '/problems/unavailable')
    harness.check_problem(*down_get, 503, '/problems/unavailable')
    assert n2[0] > n1[0] and n2[1] > n1[1], 'no acknowledgements after the crash: %s -> %s' % (
        n1, n2)
    assert not s.broken, '%d answers were neither an acknowledgement nor a clean 503:\n%s' % (
        len(s.broken), '\n'.join(s.broken[:5]))
    harness._diag('acknowledged %d uploads and %d jobs; refusals while the database was away: %s'
                  % (len(s.uploads), len(s.jobs), s.refusals))

    # Every acknowledged upload is there, byte for byte.
    for iid, data in s.uploads.items():
        st, h, b = api.get('/v1/images/%s' % iid)
        assert st == 200 and b == data, 'upload %s lost: %s' % (iid, describe(st, h, b))
    n_rows = int(psql(url, 'SELECT count(*) FROM images WHERE format = \'png\' AND width = 48'))
    assert n_rows >= len(s.uploads), (n_rows, len(s.uploads))
    # Every acknowledged job is there and ends succeeded.
    done = pgfleet.wait_jobs(api, s.jobs, timeout=240)
    bad = {k: v['status'] for k, v in done.items() if v['status'] != 'succeeded'}
    assert not bad, '%d jobs did not succeed: %s' % (len(bad), list(bad.items())[:5])
    results = {v['result_image_id'] for v in done.values()}
    assert len(results) == len(s.jobs)
    att = [v['attempts'] for v in done.values()]
    harness._diag('jobs: %d, attempts histogram %s' % (
        len(att), {a: att.count(a) for a in sorted(set(att))}))

    # The listeners came back too: a job posted now is claimed at once (no
    # 1 s poll) and ?wait is answered as soon as it is done.
    t0 = time.monotonic()
    st, h, b = api.request('POST', '/v1/jobs', body=json.dumps(
        {'image_id': src['id'], 'operations': [{'op': 'resize', 'width': 30}]}).encode(),
        headers={'Content-Type': 'application/json'})
    assert st == 202, describe(st, h, b)
    jid = json.loads(b)['id']
    st, h, b = api.get('/v1/jobs/%s?wait=20' % jid, timeout=30)
    dt = time.monotonic() - t0
    assert st == 200 and json.loads(b)['status'] == 'succeeded', describe(st, h, b)
    assert dt < 5, 'the job took %.1f s after recovery' % dt
    for p in [api] + workers:
        assert p.alive(), 'a process died: %s' % p.log()[-2000:]
        assert p.stop() == 0


if __name__ == '__main__':
    harness.run()
