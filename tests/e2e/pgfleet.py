"""PostgreSQL and multi-process helpers for the scale-out tests.

The tests run under scripts/with-postgres (make test does it), which starts a
throwaway PostgreSQL and exports IMAGE_SERVER_TEST_PG_URL (and _BINDIR,
_CTL, _LOG, ...). Every test makes a database of its own in it (new_database),
so tests running at the same time never share a queue.
"""

import json
import os
import re
import shlex
import subprocess
import time
import urllib.parse
import uuid

import harness
from harness import Server

PG_URL = os.environ.get('IMAGE_SERVER_TEST_PG_URL', '')
PG_BINDIR = os.environ.get('IMAGE_SERVER_TEST_PG_BINDIR', '')


def require_pg():
    """Fails (not skips) when the tests do not run beside a PostgreSQL."""
    assert PG_URL and PG_BINDIR, (
        'IMAGE_SERVER_TEST_PG_URL is not set: run through scripts/with-postgres '
        '(make test does)')


def url_for(dbname):
    """The cluster's URL with another database name."""
    u = urllib.parse.urlsplit(PG_URL)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, '/' + dbname, u.query, u.fragment))


def psql(url, sql):
    """Runs sql with psql; returns stdout (tuples only, unaligned)."""
    r = subprocess.run([os.path.join(PG_BINDIR, 'psql'), '-X', '-q', '-t', '-A',
                        '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, 'psql %r: %s' % (sql, r.stderr.decode())
    return r.stdout.decode().strip()


def new_database(prefix='t'):
    """Creates an empty database; returns its URL."""
    require_pg()
    name = '%s_%s' % (prefix, uuid.uuid4().hex[:12])
    psql(PG_URL, 'CREATE DATABASE %s' % name)
    return url_for(name)


def pg_ctl(*args):
    """Runs the cluster's pg_ctl (as the postgres user) with args. A start
    or restart logs to the cluster's log file: the server must not inherit
    a pipe of ours (we would wait for it to close)."""
    args = list(args)
    if args and args[0] in ('start', 'restart') and '-l' not in args:
        args += ['-l', os.environ['IMAGE_SERVER_TEST_PG_LOG']]
    cmd = shlex.split(os.environ['IMAGE_SERVER_TEST_PG_CTL']) + args
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    assert r.returncode == 0, '%s: %s' % (' '.join(cmd), r.stdout.decode())


def migrate(url, binary=None):
    r = subprocess.run([binary or harness.BIN, 'migrate', '--database', url],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                       env=harness._clean_env({}))
    assert r.returncode == 0, 'migrate failed (%d): %s' % (r.returncode, r.stdout.decode())
    return r.stdout.decode()


class FleetProcess(Server):
    """One `image-server api` or `worker` process (`command`); a worker's
    port serves /healthz and /metrics."""

    command = None

    def __init__(self, database, blobs, extra_args=(), **kw):
        self.database = database
        self.blobs = blobs
        super().__init__(extra_args=extra_args, **kw)

    def args(self, port):
        return [self.binary, self.command, '--listen', '127.0.0.1:%d' % port,
                '--database', self.database, '--blobs', self.blobs] + self.extra_args


class Api(FleetProcess):
    command = 'api'


class Worker(FleetProcess):
    command = 'worker'


def wait_jobs(api, ids, timeout):
    """Polls until every job is finished; returns {id: job}."""
    deadline = time.monotonic() + timeout
    done = {}
    while True:
        for jid in ids:
            if jid in done:
                continue
            st, h, b = api.get('/v1/jobs/%s' % jid)
            assert st == 200, harness.describe(st, h, b)
            j = json.loads(b)
            if j['status'] in ('succeeded', 'failed', 'canceled'):
                done[jid] = j
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            pending = [j for j in ids if j not in done]
            raise AssertionError('%d of %d jobs not finished after %.0f s (e.g. %s)' % (
                len(pending), len(ids), timeout, pending[:3]))
        time.sleep(0.2)
