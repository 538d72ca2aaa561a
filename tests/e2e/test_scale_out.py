"""Scale-out end to end (DESIGN §1, §4, §7): `migrate`, `api` and `worker`
processes sharing one PostgreSQL, with blobs in the database and on a shared
folder. Runs under scripts/with-postgres (make test)."""

import json
import os
import re
import signal
import subprocess
import threading
import time

import harness
from harness import test, describe
import pgfleet
from pgfleet import Api, Worker, psql

SMALL = harness.corpus('photos/small-rocket-640x427.jpg')
MID = harness.corpus('photos/mid-canon-400d-storm-1920x1280.jpg')


def post_job(api, image_id, width, fmt='png', extra_ops=()):
    body = {'image_id': image_id,
            'operations': [{'op': 'resize', 'width': width}] + list(extra_ops),
            'output': {'format': fmt}}
    st, h, b = api.request('POST', '/v1/jobs', body=json.dumps(body).encode(),
                           headers={'Content-Type': 'application/json'})
    assert st == 202, 'POST /v1/jobs via %s\n%s' % (api.url, describe(st, h, b))
    return json.loads(b)


def run_cmd(args, env=None, timeout=60):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       env=harness._clean_env(env or {}))
    return r.returncode, r.stdout.decode('utf-8', 'replace')


@test
def api_and_worker_refuse_sqlite_and_say_to_use_serve():
    d = harness.mkdtemp()
    for cmd in ('api', 'worker'):
        rc, out = run_cmd([harness.BIN, cmd, '--database', 'sqlite:%s/x.db' % d,
                           '--blobs', 'fs:%s/blobs' % d])
        assert rc == 2, '%s on sqlite: exit %d\n%s' % (cmd, rc, out)
        assert 'serve' in out and 'postgres' in out, out
    # The same through the environment twin.
    rc, out = run_cmd([harness.BIN, 'worker'], env={'IMAGE_SERVER_DATABASE': 'sqlite:%s/y.db' % d})
    assert rc == 2 and 'serve' in out, out


@test
def api_and_worker_refuse_an_unmigrated_database_then_migrate_runs_concurrently():
    url = pgfleet.new_database('unmigrated')
    for cmd in ('api', 'worker'):
        rc, out = run_cmd([harness.BIN, cmd, '--listen', '127.0.0.1:0', '--database', url,
                           '--blobs', 'db'])
        assert rc == 2, '%s on an empty database: exit %d\n%s' % (cmd, rc, out)
        assert 'image-server migrate' in out, out
    # Three deploys racing: the advisory lock lets one apply each version.
    procs = [subprocess.Popen([harness.BIN, 'migrate', '--database', url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=harness._clean_env({})) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].decode() for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, 'migrate exit %d\n%s' % (p.returncode, out)
    applied = sum(len(re.findall(r'schema migrated to version', o)) for o in outs)
    versions = psql(url, 'SELECT string_agg(version::text, \',\' ORDER BY version)'
                         ' FROM schema_migrations')
    assert applied == len(versions.split(',')), (applied, versions, outs)
    assert versions == '1,2,3,4', versions
    # Now both start.
    api = Api(url, 'db')
    st, h, b = api.get('/readyz')
    assert st == 200, describe(st, h, b)
    api.stop()


def owner_running(url, pid):
    return int(psql(url, "SELECT count(*) FROM jobs WHERE status = 'running'"
                         " AND lease_owner LIKE '%%:%d:%%'" % pid))


def fleet_run(blobs_kind, njobs, kill_one):
    """migrate, 2 api, 3 workers; an upload through one API reads back
    byte-identical through the other; njobs jobs posted round-robin; with
    kill_one a worker is killed -9 while it holds a job and a new one
    started. Every job must succeed, each with its own result image."""
    url = pgfleet.new_database('fleet')
    pgfleet.migrate(url)
    if blobs_kind == 'db':
        blobs = 'db'
    else:
        blobs = 'fs:%s' % os.path.join(harness.mkdtemp('image-server-shared-'), 'blobs')
    # Short leases and sweeps so the killed worker's job comes back soon.
    wargs = ['--workers', '1', '--lease', '2s', '--sweep-interval', '200ms']
    apis = [Api(url, blobs, ['--sweep-interval', '200ms']) for _ in range(2)]
    workers = [Worker(url, blobs, wargs) for _ in range(3)]

    # One image through API 0, read through API 1.
    src = open(SMALL, 'rb').read()
    img = apis[0].upload_ok(SMALL)
    st, h, b = apis[1].get('/v1/images/%s' % img['id'])
    assert st == 200 and b == src, 'download via the other API: %s' % describe(st, h, b)
    info = apis[1].get_json('/v1/images/%s/info' % img['id'])
    assert (info['width'], info['height']) == (640, 427), info
    # A variant made by one API is served by the other from the cache, and
    # that API writes down the use (its light sweeper), so the workers'
    # sweepers evict by real use.
    st, h, v1 = apis[0].get('/v1/images/%s?w=100&format=png' % img['id'])
    assert st == 200, describe(st, h, v1)
    time.sleep(1.1)   # last_used has a resolution of one second
    st, h, v2 = apis[1].get('/v1/images/%s?w=100&format=png' % img['id'])
    assert st == 200 and v1 == v2, describe(st, h, v2)
    p = harness.decode_check(v2, '.png')
    assert (p['width'], p['height']) == (100, 67), p
    assert psql(url, 'SELECT count(*) FROM variants') == '1'
    assert harness.wait_until(lambda: psql(
        url, 'SELECT count(*) FROM variants WHERE last_used > created_at') == '1', 10, 0.1), \
        'the cache hit on API 1 was not written down'

    jobs = []
    t0 = time.monotonic()
    for i in range(njobs):
        j = post_job(apis[i % 2], img['id'], 40 + (i % 60), extra_ops=[{'op': 'blur',
                                                                         'sigma': 1.5}])
        jobs.append(j['id'])
    post_s = time.monotonic() - t0

    killed = None
    if kill_one:
        # Kill a worker while it holds a job. Jobs are short: if it finished
        # between our look and the kill, the database shows no job of its
        # own left running, so try again with the next worker.
        for k in range(6):
            victim = workers[k]
            ok = harness.wait_until(lambda: owner_running(url, victim.pid) > 0, 60, 0.005)
            assert ok, 'worker %d never held a job' % k
            victim.kill9()
            workers.append(Worker(url, blobs, wargs))
            if owner_running(url, victim.pid) > 0:
                killed = victim.pid
                break
        assert killed, 'no worker was killed while holding a job'

    done = pgfleet.wait_jobs(apis[1], jobs, timeout=300)
    total_s = time.monotonic() - t0
    statuses = {}
    for j in done.values():
        statuses[j['status']] = statuses.get(j['status'], 0) + 1
    assert statuses == {'succeeded': njobs}, statuses
    results = [j['result_image_id'] for j in done.values()]
    assert len(set(results)) == njobs, 'result ids are not distinct'
    maxatt = max(j['attempts'] for j in done.values())
    assert all(j['attempts'] <= j['max_attempts'] for j in done.values()), maxatt
    # Exactly one image per job, plus the source: nothing was completed twice.
    n_images = int(psql(url, 'SELECT count(*) FROM images'))
    assert n_images == njobs + 1, 'images: %d, want %d' % (n_images, njobs + 1)
    retried = [j for j in done.values() if j['attempts'] > 1]
    if kill_one:
        assert retried, 'the job of the killed worker was not retried'
        owners = psql(url, "SELECT count(*) FROM jobs WHERE lease_owner IS NOT NULL")
        assert owners == '0', owners
    if blobs_kind == 'db':
        missing = psql(url, 'SELECT count(*) FROM images i WHERE NOT EXISTS'
                            ' (SELECT 1 FROM blobs b WHERE b.sha256 = i.sha256)')
        assert missing == '0', '%s images have no blob' % missing
    # Results read back through both APIs, decoded.
    for k, rid in enumerate(results[:10]):
        st, h, a = apis[0].get('/v1/images/%s' % rid)
        st2, h2, b2 = apis[1].get('/v1/images/%s' % rid)
        assert st == 200 and st2 == 200 and a == b2, describe(st2, h2, b2)
        p = harness.decode_check(a, '.png')
        assert p['loader'] == 'pngload' and 40 <= p['width'] < 100, p
    harness._diag('%d jobs on 3 workers (%s blobs): posted in %.1f s, all done in %.1f s; '
                  'retried %d (killed pid %s), max attempts %d' % (
                      njobs, blobs_kind, post_s, total_s, len(retried), killed, maxatt))
    # Graceful stop of the fleet: workers exit 0 on SIGTERM.
    for w in workers:
        if w.alive():
            rc = w.stop()
            assert rc == 0, 'worker exit status %s\n%s' % (rc, w.log())
    for a in apis:
        assert a.stop() == 0
    return url


@test
def fleet_of_2_api_and_3_workers_with_blobs_in_the_database_survives_a_killed_worker():
    fleet_run('db', 200, kill_one=True)


@test
def fleet_with_a_shared_blob_folder():
    fleet_run('fs', 60, kill_one=True)


@test
def wait_on_one_api_is_answered_when_a_worker_elsewhere_finishes():
    url = pgfleet.new_database('wait')
    pgfleet.migrate(url)
    a, b = Api(url, 'db'), Api(url, 'db')
    w = Worker(url, 'db', ['--workers', '1'])
    img = a.upload_ok(SMALL)
    lat = []
    for i in range(10):
        j = post_job(a, img['id'], 64 + i)
        t0 = time.monotonic()
        st, h, body = b.get('/v1/jobs/%s?wait=20' % j['id'], timeout=30)
        dt = time.monotonic() - t0
        assert st == 200, describe(st, h, body)
        got = json.loads(body)
        assert got['status'] == 'succeeded', got
        assert dt < 10, 'the wait took %.1f s: job_done did not reach the other API' % dt
        lat.append(dt)
    # POST-to-start latency as the database saw it (one clock).
    starts = psql(url, 'SELECT string_agg((started_at - created_at)::text, \',\') FROM jobs')
    ms = sorted(int(x) for x in starts.split(','))
    harness._diag('POST to start (database clock, ms): %s; wait answered after (s): %s' % (
        ms, ['%.3f' % x for x in lat]))
    assert ms[-1] < 1000, 'a job waited %d ms for an idle worker: LISTEN/NOTIFY did not wake it' \
        % ms[-1]
    # /metrics of the worker counts what it did.
    st, h, m = w.get('/metrics')
    assert st == 200, describe(st, h, m)
    assert re.search(rb'image_server_job_attempts_total\{outcome="succeeded"\} 10\b', m), m[:2000]
    st, h, _ = w.get('/v1/images')
    assert st == 404, 'a worker serves no API (%d)' % st


@test
def worker_sigterm_gives_its_job_back_and_another_worker_finishes_it():
    url = pgfleet.new_database('term')
    pgfleet.migrate(url)
    api = Api(url, 'db')
    w1 = Worker(url, 'db', ['--workers', '1', '--shutdown-timeout', '0s'])
    img = api.upload_ok(MID)
    # A slow job: a big blur on the 2.4 MP photo.
    j = post_job(api, img['id'], 1800, extra_ops=[{'op': 'blur', 'sigma': 40}])
    assert harness.wait_until(lambda: owner_running(url, w1.pid) > 0, 30, 0.01)
    rc = w1.stop()
    assert rc == 0, 'worker exit %s\n%s' % (rc, w1.log())
    row = psql(url, "SELECT status || ' ' || attempts FROM jobs WHERE id = '%s'" % j['id'])
    assert row in ('queued 0', 'succeeded 1'), row
    w2 = Worker(url, 'db', ['--workers', '1'])
    done = pgfleet.wait_jobs(api, [j['id']], 120)
    assert done[j['id']]['status'] == 'succeeded', done
    w2.stop()


@test
def scale_out_demo_script_brings_the_layout_up_and_down():
    demo = os.path.join(harness.REPO, 'scripts', 'scale-out-demo')
    p = subprocess.Popen([demo, '--binary', harness.BIN, '--port', '0'],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=harness._clean_env({}), start_new_session=True)
    lines = []
    url = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = p.stdout.readline().decode('utf-8', 'replace')
            if not line:
                break
            lines.append(line)
            m = re.search(r'scale-out-demo: ready at (http://\S+)', line)
            if m:
                url = m.group(1)
                break
        assert url, 'the demo did not come up:\n' + ''.join(lines[-60:])
        host, port = url[len('http://'):].rstrip('/').split(':')

        class Lb(harness.Server):
            pass
        lb = Lb(start=False)
        lb.port = int(port)
        img = lb.upload_ok(SMALL)
        st, h, b = lb.get('/v1/images/%s' % img['id'])
        assert st == 200 and b == open(SMALL, 'rb').read(), describe(st, h, b)
        ids = [post_job(lb, img['id'], 50 + i)['id'] for i in range(12)]
        done = pgfleet.wait_jobs(lb, ids, 120)
        assert all(j['status'] == 'succeeded' for j in done.values()), done
        # Both APIs answered through the balancer.
        text = ''.join(lines)
        assert text.count('api') >= 2 and text.count('worker') >= 3, text
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rest = p.communicate(timeout=90)[0].decode('utf-8', 'replace')
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rest = p.communicate()[0].decode('utf-8', 'replace')
            raise AssertionError('the demo did not stop on SIGTERM:\n' + rest[-3000:])
    assert p.returncode == 0, 'demo exit %s:\n%s' % (p.returncode, (''.join(lines) + rest)[-3000:])
    # Nothing it started is left running.
    time.sleep(0.5)
    r = subprocess.run(['pgrep', '-s', str(p.pid)], stdout=subprocess.PIPE)
    assert r.stdout.strip() == b'', 'left running: %s' % r.stdout.decode()


if __name__ == '__main__':
    harness.run()
