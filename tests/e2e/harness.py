"""A tiny end-to-end test framework for image-server (Python 3 stdlib only).

Usage in a test file:

    import harness
    from harness import test, Server

    @test
    def uploads_work():
        srv = shared_server()
        status, headers, body = srv.upload(harness.corpus('photos/small-rocket-640x427.jpg'))
        assert status == 201, harness.describe(status, headers, body)

    if __name__ == '__main__':
        harness.run()

run() prints TAP (1..N, ok / not ok lines, `# ` diagnostics), appends one
last test per file that checks every server log for sanitizer reports, stops
every server, removes every temp folder and exits 0 when all passed, else 1.

Environment:
  IMAGE_SERVER_BIN          the binary under test (usually the ASan build)
  IMAGE_SERVER_RELEASE_BIN  optional release build (memory measurements)
  CORPUS                    the test images (default /work/shared/corpus)
  E2E_TEST_TIMEOUT          per-test time limit in seconds (default 180)
"""

import atexit
import hashlib
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _default_bin():
    for cand in ('build-san/image-server', 'build/image-server'):
        p = os.path.join(REPO, cand)
        if os.access(p, os.X_OK):
            return p
    return None


BIN = os.environ.get('IMAGE_SERVER_BIN') or _default_bin()
RELEASE_BIN = os.environ.get('IMAGE_SERVER_RELEASE_BIN') or None
CORPUS = os.environ.get('CORPUS') or '/work/shared/corpus'
TEST_TIMEOUT = float(os.environ.get('E2E_TEST_TIMEOUT', '180'))

SANITIZER_RE = re.compile(
    r'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|'
    r'WARNING: ThreadSanitizer|AddressSanitizer:DEADLYSIGNAL')

MiB = 1024 * 1024
KiB = 1024


# ---------------------------------------------------------------------------
# registry and runner
# ---------------------------------------------------------------------------

class Skip(Exception):
    """Raise (or call skip()) inside a test to report it as `ok # SKIP`."""


def skip(reason):
    raise Skip(reason)


class TestTimeout(Exception):
    pass


_tests = []          # [(name, fn)]
_servers = []        # every Server ever created (for cleanup and log checks)
_tempdirs = []       # every temp folder created here
_cleaned = False


def test(arg=None):
    """@test or @test('name'): registers a test function, run in order."""
    if callable(arg):
        _tests.append((arg.__name__.replace('_', ' '), arg))
        return arg

    def deco(fn):
        _tests.append((arg or fn.__name__.replace('_', ' '), fn))
        return fn
    return deco


def add_test(name, fn):
    """Registers fn under name (for tests generated in a loop)."""
    _tests.append((name, fn))


def _diag(text):
    for line in str(text).rstrip('\n').split('\n'):
        print('# ' + line)


def _alarm(signum, frame):
    raise TestTimeout('test took longer than %.0f s (E2E_TEST_TIMEOUT)' % TEST_TIMEOUT)


def _sigterm(signum, frame):
    # meson's timeout sends SIGTERM: still stop our servers (atexit runs).
    raise SystemExit(1)


def run():
    """Runs every registered test in order, prints TAP, exits."""
    signal.signal(signal.SIGTERM, _sigterm)
    if BIN is None or not os.access(BIN, os.X_OK):
        print('Bail out! IMAGE_SERVER_BIN is not set or not executable (%r)' % BIN)
        sys.stdout.flush()
        sys.exit(1)
    tests = list(_tests) + [('no sanitizer reports in server logs', _sanitizer_check)]
    print('1..%d' % len(tests))
    print('# binary: %s' % BIN)
    sys.stdout.flush()
    failed = 0
    use_alarm = hasattr(signal, 'SIGALRM')
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
    for n, (name, fn) in enumerate(tests, 1):
        started = time.monotonic()
        dead_before = {id(s) for s in _servers if s.died_unexpectedly()}
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
        try:
            fn()
        except Skip as e:
            print('ok %d - %s # SKIP %s' % (n, name, e))
        except BaseException as e:  # noqa: B902 - report everything
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print('not ok %d - %s' % (n, name))
            msg = str(e) or e.__class__.__name__
            _diag('%s: %s' % (e.__class__.__name__, msg) if not isinstance(e, AssertionError)
                  else msg)
            _diag(''.join(traceback.format_exception(type(e), e, e.__traceback__)))
            for s in _servers:
                if s.died_unexpectedly() and id(s) not in dead_before:
                    _diag('server pid %s died (exit status %s); its log:' % (s.pid, s.returncode))
                    _diag(s.crash_excerpt())
        else:
            print('ok %d - %s' % (n, name))
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
        _diag('%.1f s' % (time.monotonic() - started))
        sys.stdout.flush()
    cleanup()
    sys.stdout.flush()
    sys.exit(1 if failed else 0)


def _sanitizer_check():
    """Stops every server (exit-time reports, e.g. leaks, land in the log) and
    scans every log for ASan / UBSan / LSan reports."""
    for s in list(_servers):
        if s.alive():
            s.stop()
    bad = []
    for s in _servers:
        for path in s.log_paths:
            try:
                with open(path, 'r', errors='replace') as f:
                    text = f.read()
            except OSError:
                continue
            lines = text.split('\n')
            for i, line in enumerate(lines):
                if SANITIZER_RE.search(line):
                    bad.append('%s:%d: %s' % (os.path.basename(path), i + 1, line))
                    excerpt = '\n'.join(lines[i:i + 40])
                    bad.append(excerpt)
                    break
    assert not bad, 'sanitizer reports found:\n' + '\n'.join(bad)


def cleanup():
    global _cleaned
    if _cleaned:
        return
    _cleaned = True
    for s in list(_servers):
        try:
            if s.alive():
                s.stop()
        except Exception:
            try:
                s.kill9()
            except Exception:
                pass
    for d in _tempdirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(cleanup)


def mkdtemp(prefix='image-server-e2e-'):
    d = tempfile.mkdtemp(prefix=prefix)
    _tempdirs.append(d)
    return d


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------

def free_port(host='127.0.0.1'):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class ServerError(AssertionError):
    pass


def _die_with_parent():
    """preexec_fn: the server gets SIGKILL if this test process dies without
    cleaning up (e.g. killed by a harness timeout)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _clean_env(env):
    e = {k: v for k, v in os.environ.items() if not k.startswith('IMAGE_SERVER_')}
    if env:
        e.update(env)
    return e


def _excerpt(text, max_lines=80):
    lines = text.rstrip('\n').split('\n')
    for i, line in enumerate(lines):
        if SANITIZER_RE.search(line) or 'AddressSanitizer' in line:
            return '\n'.join(lines[max(0, i - 5):i + max_lines])
    return '\n'.join(lines[-40:])


class Server:
    """One `image-server serve` process on a free loopback port.

    Server(extra_args=[...], data_dir=None, binary=None, env=None)
    data_dir: reuse a folder (restart); default a fresh temp folder.
    env: extra environment variables (IMAGE_SERVER_* from the caller's own
    environment are removed first, so only what a test sets applies).
    """

    _counter = 0

    def __init__(self, extra_args=(), data_dir=None, binary=None, env=None, start=True,
                 ready_timeout=30.0):
        self.binary = binary or BIN
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.data_dir = data_dir or mkdtemp()
        self.ready_timeout = ready_timeout
        self.proc = None
        self.port = None
        self.log_paths = []
        self.log_path = None
        self._stopping = False
        self.returncode = None
        self.stop_seconds = None
        _servers.append(self)
        if start:
            self.start()

    # -- process ----------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    @property
    def blobs_dir(self):
        return os.path.join(self.data_dir, 'blobs')

    def database(self):
        """sqlite:DATA/image-server.db, or with IMAGE_SERVER_E2E_DATABASE=pg a
        PostgreSQL database of this data folder's own (made on first use in
        the cluster of scripts/with-postgres), so the same tests run `serve`
        on both backends."""
        if os.environ.get('IMAGE_SERVER_E2E_DATABASE') != 'pg':
            return 'sqlite:%s' % os.path.join(self.data_dir, 'image-server.db')
        marker = os.path.join(self.data_dir, 'pg-url')
        if os.path.exists(marker):
            return open(marker).read().strip()
        base = os.environ.get('IMAGE_SERVER_TEST_PG_URL')
        psql = os.path.join(os.environ.get('IMAGE_SERVER_TEST_PG_BINDIR', ''), 'psql')
        assert base, 'IMAGE_SERVER_E2E_DATABASE=pg needs scripts/with-postgres'
        import uuid
        name = 'e2e_' + uuid.uuid4().hex[:16]
        r = subprocess.run([psql, '-X', '-q', '-d', base, '-c', 'CREATE DATABASE ' + name],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        assert r.returncode == 0, r.stdout.decode()
        import urllib.parse
        u = urllib.parse.urlsplit(base)
        url = urllib.parse.urlunsplit((u.scheme, u.netloc, '/' + name, u.query, ''))
        with open(marker, 'w') as f:
            f.write(url)
        return url

    def args(self, port):
        return [self.binary, 'serve',
                '--listen', '127.0.0.1:%d' % port,
                '--database', self.database(),
                '--blobs', 'fs:%s' % self.blobs_dir] + self.extra_args

    def start(self):
        last_err = None
        for attempt in range(4):
            port = free_port()
            Server._counter += 1
            self.log_path = os.path.join(self.data_dir, 'server-%d-%d.log' % (os.getpid(),
                                                                              Server._counter))
            self.log_paths.append(self.log_path)
            logf = open(self.log_path, 'wb')
            try:
                self.proc = subprocess.Popen(self.args(port), stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=logf, env=_clean_env(self.env),
                                             preexec_fn=_die_with_parent)
            finally:
                logf.close()
            self.port = port
            self._stopping = False
            self.returncode = None
            ok, why = self._wait_ready()
            if ok:
                return self
            last_err = why
            if self.proc.poll() is None:
                self.kill9()
                break
            text = self.log()
            if not re.search(r'bind|in use|listen|port', text, re.I):
                break
            # somebody took the port between our probe and the bind: retry
        self._stopping = True
        raise ServerError('server did not become ready: %s\ncommand: %s\nlog:\n%s' % (
            last_err, ' '.join(self.args(self.port)), _excerpt(self.log())))

    def _wait_ready(self):
        deadline = time.monotonic() + self.ready_timeout
        last = 'no answer'
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                return False, 'exited with status %s before it was ready' % rc
            try:
                conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=2)
                conn.request('GET', '/healthz')
                r = conn.getresponse()
                r.read()
                conn.close()
                if r.status == 200:
                    return True, None
                last = 'GET /healthz answered %d' % r.status
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        return False, 'no 200 from /healthz within %.0f s (last: %s)' % (self.ready_timeout, last)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def died_unexpectedly(self):
        return (self.proc is not None and not self._stopping and self.proc.poll() is not None)

    def stop(self, timeout=15.0):
        """SIGTERM, wait (SIGKILL after timeout). Returns the exit status
        (negative: killed by that signal)."""
        if self.proc is None:
            return None
        self._stopping = True
        if self.proc.poll() is None:
            t0 = time.monotonic()
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.stop_seconds = time.monotonic() - t0
        self.returncode = self.proc.returncode
        return self.returncode

    def kill9(self):
        if self.proc is None:
            return None
        self._stopping = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def restart(self, extra_args=None):
        """Stops (SIGTERM) if running and starts again on the same folder."""
        if self.alive():
            self.stop()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start()

    def log(self):
        """Text of the current log (stderr + stdout of this run)."""
        try:
            with open(self.log_path, 'r', errors='replace') as f:
                return f.read()
        except (OSError, TypeError):
            return ''

    def all_logs(self):
        out = []
        for p in self.log_paths:
            try:
                with open(p, 'r', errors='replace') as f:
                    out.append(f.read())
            except OSError:
                pass
        return '\n'.join(out)

    def crash_excerpt(self):
        return _excerpt(self.log())

    def status(self):
        """/proc/PID/status as a dict of ints (kB) for Vm* lines."""
        out = {}
        with open('/proc/%d/status' % self.pid) as f:
            for line in f:
                k, _, v = line.partition(':')
                v = v.strip()
                if v.endswith(' kB'):
                    out[k] = int(v[:-3]) * 1024
        return out

    def _check_alive(self, err):
        """Turns a connection error into a clear failure when the server died
        on its own (not when a test stopped or killed it)."""
        if self.died_unexpectedly():
            self.returncode = self.proc.returncode
            raise ServerError('server died (exit status %s) during request: %r\n%s' % (
                self.returncode, err, self.crash_excerpt()))

    # -- HTTP -------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=60.0):
        """One request on a new connection. Returns (status, headers, body):
        headers is a dict with lower-cased names (repeated ones joined by ", ")."""
        headers = dict(headers or {})
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        try:
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                time.sleep(0.2)
                self._check_alive(e)
                raise
            hdrs = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = v if k not in hdrs else hdrs[k] + ', ' + v
            return r.status, hdrs, data
        finally:
            conn.close()

    def get(self, path, headers=None, timeout=60.0):
        return self.request('GET', path, headers=headers, timeout=timeout)

    def get_json(self, path, expect=200):
        st, h, b = self.request('GET', path)
        assert st == expect, 'GET %s: expected %d\n%s' % (path, expect, describe(st, h, b))
        return json.loads(b)

    def upload(self, path_or_bytes, content_type='image/jpeg', headers=None, timeout=120.0):
        """POST /v1/images with a raw body. Returns (status, headers, body)."""
        data = read_bytes(path_or_bytes)
        h = dict(headers or {})
        if content_type is not None:
            h['Content-Type'] = content_type
        return self.request('POST', '/v1/images', body=data, headers=h, timeout=timeout)

    def upload_ok(self, path_or_bytes, content_type=None, headers=None):
        """Uploads (content type from the file name when None), asserts 201,
        returns the image JSON."""
        if content_type is None:
            content_type = (content_type_for_path(path_or_bytes)
                            if isinstance(path_or_bytes, str) else 'image/jpeg')
        st, h, b = self.upload(path_or_bytes, content_type, headers)
        assert st == 201, 'upload of %s: expected 201\n%s' % (
            label(path_or_bytes), describe(st, h, b))
        return json.loads(b)

    def upload_multipart(self, fields, timeout=120.0):
        body, ctype = multipart(fields)
        return self.request('POST', '/v1/images', body=body, headers={'Content-Type': ctype},
                            timeout=timeout)

    def healthy(self, timeout=5.0):
        try:
            st, _, _ = self.request('GET', '/healthz', timeout=timeout)
            return st == 200
        except (OSError, http.client.HTTPException):
            return False


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def corpus(rel):
    return os.path.join(CORPUS, rel)


def read_bytes(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes)
    with open(path_or_bytes, 'rb') as f:
        return f.read()


def label(path_or_bytes):
    if isinstance(path_or_bytes, str):
        return os.path.relpath(path_or_bytes, CORPUS) if path_or_bytes.startswith(CORPUS) \
            else path_or_bytes
    return '<%d bytes>' % len(path_or_bytes)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


CONTENT_TYPES = {
    'jpeg': 'image/jpeg', 'png': 'image/png', 'webp': 'image/webp', 'gif': 'image/gif',
    'tiff': 'image/tiff', 'heic': 'image/heic', 'avif': 'image/avif',
}
EXT_TYPES = {
    '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp',
    '.gif': 'image/gif', '.tif': 'image/tiff', '.tiff': 'image/tiff', '.heic': 'image/heic',
    '.avif': 'image/avif', '.svg': 'image/svg+xml',
}


def content_type_for_path(path):
    return EXT_TYPES.get(os.path.splitext(path)[1].lower(), 'image/jpeg')


def describe(status, headers, body, limit=800):
    """A readable dump of a response for assertion messages."""
    text = body[:limit].decode('utf-8', 'replace') if isinstance(body, (bytes, bytearray)) \
        else str(body)[:limit]
    hs = '\n'.join('  %s: %s' % kv for kv in sorted((headers or {}).items()))
    return 'status %s\nheaders:\n%s\nbody (%d bytes): %s' % (
        status, hs, len(body) if body is not None else 0, text)


PROBLEM_STATUS = {
    '/problems/invalid-operation': 400, '/problems/unauthorized': 401,
    '/problems/not-found': 404, '/problems/method-not-allowed': 405,
    '/problems/conflict': 409, '/problems/payload-too-large': 413,
    '/problems/unsupported-media-type': 415, '/problems/invalid-image': 422,
    '/problems/image-too-large': 422, '/problems/too-many-requests': 429,
    '/problems/internal': 500, '/problems/overloaded': 503, '/problems/timeout': 503,
    '/problems/unavailable': 503,
}


def check_problem(status, headers, body, expect_status, expect_type=None):
    """Asserts an RFC 9457 problem with the given status and type slug
    (expect_type like 'not-found' or '/problems/not-found'; None: any).
    Returns the parsed problem."""
    ctx = describe(status, headers, body)
    if isinstance(expect_status, int):
        assert status == expect_status, 'expected status %d\n%s' % (expect_status, ctx)
    else:
        assert status in expect_status, 'expected status in %s\n%s' % (expect_status, ctx)
    ctype = headers.get('content-type', '')
    assert ctype.split(';')[0].strip().lower() == 'application/problem+json', \
        'expected Content-Type application/problem+json\n' + ctx
    try:
        p = json.loads(body)
    except ValueError as e:
        raise AssertionError('problem body is not JSON (%s)\n%s' % (e, ctx))
    assert isinstance(p, dict), 'problem is not an object\n' + ctx
    for k in ('type', 'title', 'status', 'detail'):
        assert k in p, 'problem has no %r\n%s' % (k, ctx)
    assert isinstance(p['title'], str) and p['title'], 'problem title empty\n' + ctx
    assert isinstance(p['detail'], str), 'problem detail not a string\n' + ctx
    assert p['status'] == status, 'problem status %r != HTTP status %d\n%s' % (
        p['status'], status, ctx)
    assert p['type'] in PROBLEM_STATUS, 'type %r is not one of the contract slugs\n%s' % (
        p['type'], ctx)
    assert PROBLEM_STATUS[p['type']] == status, 'type %s goes with status %d, not %d\n%s' % (
        p['type'], PROBLEM_STATUS[p['type']], status, ctx)
    if expect_type is not None:
        types = [expect_type] if isinstance(expect_type, str) else list(expect_type)
        types = [t if t.startswith('/problems/') else '/problems/' + t for t in types]
        assert p['type'] in types, 'expected type %s\n%s' % (' or '.join(types), ctx)
    return p


# -- vipsheader ----------------------------------------------------------------

_probe_cache = {}


def probe(path):
    """What libvips says about a file: width, height (one page), bands,
    loader, orientation (1 when absent), pages, has_icc."""
    if path in _probe_cache:
        return _probe_cache[path]
    r = subprocess.run(['vipsheader', '-a', path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    fields = {}
    for line in r.stdout.decode('utf-8', 'replace').split('\n')[1:]:
        k, sep, v = line.partition(': ')
        if sep:
            fields.setdefault(k.strip(), v.strip())
    if 'width' not in fields:
        raise AssertionError('vipsheader -a %s failed: %s' % (path, r.stderr.decode()))
    height = int(fields['height'])
    if 'page-height' in fields:
        height = int(fields['page-height'])
    info = {
        'width': int(fields['width']),
        'height': height,
        'bands': int(fields['bands']),
        'loader': fields.get('vips-loader', ''),
        'orientation': int(fields.get('orientation', '1') or 1),
        'pages': int(fields.get('n-pages', '1') or 1),
        'has_icc': 'icc-profile-data' in fields,
        'fields': fields,
    }
    _probe_cache[path] = info
    return info


def vips_field(path, field):
    """`vipsheader -f FIELD FILE` (None when the field is absent)."""
    r = subprocess.run(['vipsheader', '-f', field, path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    if r.returncode != 0:
        return None
    return r.stdout.decode().strip()


LOADER_FORMATS = {'jpegload': 'jpeg', 'pngload': 'png', 'webpload': 'webp', 'gifload': 'gif',
                  'tiffload': 'tiff'}


def heif_brand(path):
    data = read_bytes(path)[:64]
    if data[4:8] != b'ftyp':
        return None
    brands = [data[8:12]] + [data[i:i + 4] for i in range(16, min(len(data), 40), 4)]
    if data[8:12] in (b'avif', b'avis'):
        return 'avif'
    if data[8:12] in (b'heic', b'heix', b'heim', b'heis', b'hevc', b'hevx', b'mif1', b'msf1'):
        return 'avif' if b'avif' in brands and b'heic' not in brands else 'heic'
    return 'avif' if b'avif' in brands else 'heic'


def expected_image(path):
    """(width, height, format) the server should report for a corpus file:
    one frame, after the EXIF orientation."""
    p = probe(path)
    w, h = p['width'], p['height']
    if p['orientation'] in (5, 6, 7, 8):
        w, h = h, w
    loader = p['loader']
    if loader.startswith('heif'):
        fmt = heif_brand(path)
    else:
        fmt = LOADER_FORMATS.get(loader, loader)
    return w, h, fmt


def decode_check(data, suffix):
    """Writes bytes to a temp file and returns probe() of it (so an answer
    can be checked with vipsheader)."""
    d = mkdtemp('image-server-e2e-dec-')
    p = os.path.join(d, 'x' + suffix)
    with open(p, 'wb') as f:
        f.write(data)
    return probe(p)


# -- bodies ----------------------------------------------------------------------

def multipart(fields, boundary=None):
    """fields: list of (name, value_bytes, filename_or_None, content_type_or_None).
    Returns (body, content_type_header)."""
    boundary = boundary or ('e2e-%016x' % random.getrandbits(64))
    out = []
    for name, value, filename, ctype in fields:
        out.append(b'--' + boundary.encode() + b'\r\n')
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out.append(disp.encode() + b'\r\n')
        if ctype:
            out.append(('Content-Type: %s\r\n' % ctype).encode())
        out.append(b'\r\n')
        out.append(value)
        out.append(b'\r\n')
    out.append(b'--' + boundary.encode() + b'--\r\n')
    return b''.join(out), 'multipart/form-data; boundary=%s' % boundary


def _png_chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def make_png(width=64, height=48, seed=0, text=None):
    """A small valid RGB PNG (stdlib only); different seeds/texts give
    different bytes (and sha256)."""
    rnd = random.Random(seed)
    base = [rnd.randrange(256) for _ in range(3)]
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            row += bytes(((base[0] + x * 3) & 255, (base[1] + y * 5) & 255,
                          (base[2] + x + y) & 255))
        rows.append(bytes(row))
    raw = b''.join(rows)
    out = b'\x89PNG\r\n\x1a\n'
    out += _png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
    if text is not None:
        out += _png_chunk(b'tEXt', b'Comment\x00' + text.encode())
    out += _png_chunk(b'IDAT', zlib.compress(raw, 6))
    out += _png_chunk(b'IEND', b'')
    return out


# -- raw sockets -----------------------------------------------------------------

def connect(port, host='127.0.0.1', source=None, timeout=10.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source is not None:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def read_response(sock, timeout=30.0):
    """Parses one HTTP response from a connected socket. Returns
    (status, headers, body) or raises OSError / http.client errors."""
    sock.settimeout(timeout)
    r = http.client.HTTPResponse(sock)
    r.begin()
    data = r.read()
    hdrs = {}
    for k, v in r.getheaders():
        k = k.lower()
        hdrs[k] = v if k not in hdrs else hdrs[k] + ', ' + v
    return r.status, hdrs, data


def readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def send_streaming(port, head, chunks, deadline_s=60.0, first_wait=2.0, source=None):
    """Sends request head, then body chunks (an iterator of bytes), watching
    for an early answer. Returns a dict:
      status/headers/body: the response (None if none could be read)
      sent: body bytes sent, error: the send/recv error (or None),
      cut: True when the server closed or reset before the body was sent."""
    out = {'status': None, 'headers': None, 'body': None, 'sent': 0, 'error': None, 'cut': False}
    s = connect(port, source=source)
    end = time.monotonic() + deadline_s
    try:
        s.sendall(head)
        early = readable(s, first_wait)
        if not early:
            for chunk in chunks:
                if time.monotonic() > end:
                    out['error'] = 'deadline while sending'
                    break
                try:
                    if readable(s, 0):
                        break  # an answer (or a close) came early
                    s.sendall(chunk)
                    out['sent'] += len(chunk)
                except OSError as e:
                    out['error'] = repr(e)
                    out['cut'] = True
                    break
        try:
            st, h, b = read_response(s, timeout=max(1.0, end - time.monotonic()))
            out['status'], out['headers'], out['body'] = st, h, b
        except (OSError, http.client.HTTPException) as e:
            if out['error'] is None:
                out['error'] = repr(e)
            out['cut'] = True
    finally:
        s.close()
    return out


def wait_until(fn, timeout, interval=0.1):
    """Polls fn() until it returns something truthy; returns it or None."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= end:
            return None
        time.sleep(interval)


def blob_files(blobs_dir):
    """Regular files under blobs/ (excluding blobs/tmp/), relative paths."""
    out = []
    for root, dirs, files in os.walk(blobs_dir):
        rel = os.path.relpath(root, blobs_dir)
        if rel == 'tmp' or rel.startswith('tmp' + os.sep):
            continue
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(os.path.relpath(p, blobs_dir))
    return sorted(out)


def blob_path(blobs_dir, sha):
    return os.path.join(blobs_dir, sha[0:2], sha[2:4], sha)


ID_RE = re.compile(r'^[A-Za-z0-9_-]{22}$')
TIME_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$')


class RssSampler:
    """Samples VmRSS of a process every `interval` seconds in a thread
    (a context manager); .peak is the highest seen, in bytes."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                with open('/proc/%d/status' % self.pid) as f:
                    for line in f:
                        if line.startswith('VmRSS:'):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                            self.samples += 1
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(2)
