#!/usr/bin/env python3
"""End-to-end: the command line (version, help, flag errors, environment
twins) and graceful stop on SIGTERM."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem, describe, sha256, KiB  # noqa: E402


def run_bin(args, env=None, timeout=30):
    """Runs the binary in a fresh temp folder; returns (exit status, stdout
    text, stderr text). A run past the timeout is killed and fails the test."""
    cwd = harness.mkdtemp('image-server-e2e-cli-')
    try:
        r = subprocess.run([harness.BIN] + args, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=harness._clean_env(env), timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError('`image-server %s` still running after %d s (killed)\n'
                             'stdout:\n%s\nstderr:\n%s' % (
                                 ' '.join(args), timeout,
                                 (e.stdout or b'').decode('utf-8', 'replace')[-2000:],
                                 (e.stderr or b'').decode('utf-8', 'replace')[-2000:]))
    out, err = r.stdout.decode('utf-8', 'replace'), r.stderr.decode('utf-8', 'replace')
    if harness.SANITIZER_RE.search(err):
        raise AssertionError('sanitizer report from `image-server %s`:\n%s' % (
            ' '.join(args), harness._excerpt(err)))
    return r.returncode, out, err


def safe_serve(*args):
    """`serve` args that, should the server start after all, stay in a temp
    folder on a free port (so a wrongly accepted flag cannot touch anything)."""
    d = harness.mkdtemp()
    return ['serve', '--listen', '127.0.0.1:%d' % harness.free_port(),
            '--database', 'sqlite:%s/image-server.db' % d, '--blobs', 'fs:%s/blobs' % d] + \
        list(args)


def show(rc, out, err):
    return 'exit status %s\nstdout:\n%s\nstderr:\n%s' % (rc, out[-3000:], err[-3000:])


def nonempty_lines(text):
    return [ln for ln in text.split('\n') if ln.strip()]


@test
def version_prints_one_line_and_exits_0():
    rc, out, err = run_bin(['--version'])
    assert rc == 0, show(rc, out, err)
    lines = nonempty_lines(out)
    assert len(lines) == 1, 'expected one line\n' + show(rc, out, err)
    m = re.match(r'^image-server (\d+\.\d+\.\d+) \(libvips (\d+\.\d+\.\d+)\)$', lines[0])
    assert m, 'line %r does not read "image-server X.Y.Z (libvips A.B.C)"' % lines[0]
    try:
        v = subprocess.run(['vips', '--version'], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=10).stdout.decode()
        vm = re.search(r'(\d+\.\d+\.\d+)', v)
    except OSError:
        vm = None
    if vm:
        assert m.group(2) == vm.group(1), 'libvips %s, but `vips --version` says %s' % (
            m.group(2), vm.group(1))


FLAGS = [
    # flag, environment twin, acceptable spellings of the default
    ('--listen', 'IMAGE_SERVER_LISTEN', ['127.0.0.1:8000']),
    ('--database', 'IMAGE_SERVER_DATABASE', ['sqlite:./data/image-server.db']),
    ('--blobs', 'IMAGE_SERVER_BLOBS', ['fs:./data/blobs']),
    ('--max-body-bytes', 'IMAGE_SERVER_MAX_BODY_BYTES', ['50MiB', '52428800']),
    ('--max-pixels', 'IMAGE_SERVER_MAX_PIXELS', ['100000000']),
    ('--timeout', 'IMAGE_SERVER_TIMEOUT', ['30s']),
    ('--max-connections', 'IMAGE_SERVER_MAX_CONNECTIONS', ['10000']),
    ('--blob-grace', 'IMAGE_SERVER_BLOB_GRACE', ['1h', '60m', '3600s']),
]


def check_help(out, cmdline):
    for flag, env, defaults in FLAGS:
        pat = re.compile(re.escape(flag) + r'(?![\w-])')
        lines = out.split('\n')
        idx = [i for i, ln in enumerate(lines) if pat.search(ln)]
        assert idx, '`%s` does not list %s:\n%s' % (cmdline, flag, out)
        assert re.search(re.escape(env) + r'(?!\w)', out), \
            '`%s` does not name %s:\n%s' % (cmdline, env, out)
        near = '\n'.join('\n'.join(lines[i:i + 3]) for i in idx)
        assert any(d in near for d in defaults), \
            '`%s`: default of %s (%s) not shown next to it:\n%s' % (
                cmdline, flag, ' or '.join(defaults), near)


@test
def help_exits_0_and_lists_every_flag_with_default():
    rc, out, err = run_bin(['--help'])
    assert rc == 0, show(rc, out, err)
    check_help(out, 'image-server --help')


@test
def serve_help_exits_0_and_lists_every_flag_with_default():
    rc, out, err = run_bin(['serve', '--help'])
    assert rc == 0, show(rc, out, err)
    check_help(out, 'image-server serve --help')


@test
def bad_flag_value_exits_2_with_one_line_naming_the_flag():
    rc, out, err = run_bin(safe_serve('--max-pixels', 'abc'), timeout=20)
    assert rc == 2, show(rc, out, err)
    lines = nonempty_lines(err)
    assert len(lines) == 1, 'expected one line on stderr\n' + show(rc, out, err)
    assert '--max-pixels' in lines[0], show(rc, out, err)


@test
def bad_size_and_duration_values_exit_2():
    for flag, value in (('--max-body-bytes', '12XB'), ('--max-body-bytes', '-1'),
                        ('--timeout', 'soon'), ('--blob-grace', '5 parsecs'),
                        ('--max-connections', '10k')):
        rc, out, err = run_bin(safe_serve(flag, value), timeout=20)
        assert rc == 2, '%s %s\n%s' % (flag, value, show(rc, out, err))
        assert flag in err, '%s %s: stderr does not name the flag\n%s' % (
            flag, value, show(rc, out, err))


@test
def unknown_flag_exits_2_naming_it():
    rc, out, err = run_bin(safe_serve('--no-such-flag'), timeout=20)
    assert rc == 2, show(rc, out, err)
    assert '--no-such-flag' in err, show(rc, out, err)


@test
def unknown_subcommand_exits_2():
    rc, out, err = run_bin(['frobnicate'], timeout=20)
    assert rc == 2, show(rc, out, err)
    assert err.strip(), 'no message on stderr\n' + show(rc, out, err)


@test
def bad_environment_value_exits_2():
    rc, out, err = run_bin(safe_serve(), env={'IMAGE_SERVER_MAX_PIXELS': 'abc'}, timeout=20)
    assert rc == 2, show(rc, out, err)
    assert 'MAX_PIXELS' in err or '--max-pixels' in err, show(rc, out, err)


@test
def database_under_a_regular_file_is_a_startup_error():
    d = harness.mkdtemp()
    f = os.path.join(d, 'not-a-folder')
    with open(f, 'w') as fh:
        fh.write('x')
    port = harness.free_port()
    rc, out, err = run_bin(['serve', '--listen', '127.0.0.1:%d' % port,
                            '--database', 'sqlite:%s/image-server.db' % f,
                            '--blobs', 'fs:%s/blobs' % d], timeout=60)
    assert rc != 0, show(rc, out, err)
    assert err.strip(), 'no message\n' + show(rc, out, err)


@test
def listen_address_in_use_is_a_startup_error():
    d = harness.mkdtemp()
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(1)
    try:
        port = sock.getsockname()[1]
        rc, out, err = run_bin(['serve', '--listen', '127.0.0.1:%d' % port,
                                '--database', 'sqlite:%s/image-server.db' % d,
                                '--blobs', 'fs:%s/blobs' % d], timeout=60)
    finally:
        sock.close()
    assert rc != 0, show(rc, out, err)
    assert err.strip(), 'no message\n' + show(rc, out, err)


@test
def environment_twin_sets_max_body_bytes():
    s = Server(env={'IMAGE_SERVER_MAX_BODY_BYTES': '1KiB'})
    st, h, b = s.upload(b'\xff\xd8\xff' + b'\0' * (2 * KiB - 3), 'image/jpeg')
    check_problem(st, h, b, 413, 'payload-too-large')
    img = s.request('GET', '/healthz')
    assert img[0] == 200
    s.stop()


@test
def flag_wins_over_environment_twin():
    s = Server(['--max-body-bytes', '1MiB'], env={'IMAGE_SERVER_MAX_BODY_BYTES': '1KiB'})
    data = harness.read_bytes(corpus('photos/small-rocket-640x427.jpg'))
    st, h, b = s.upload(data, 'image/jpeg')
    assert st == 201, describe(st, h, b)
    s.stop()


@test
def sigterm_exits_0_within_a_few_seconds():
    s = Server()
    s.upload_ok(corpus('photos/small-rocket-640x427.jpg'))
    s.get('/healthz')
    rc = s.stop(timeout=20)
    assert rc == 0, 'exit status %s after SIGTERM\n%s' % (rc, s.crash_excerpt())
    assert s.stop_seconds < 10, 'took %.1f s to stop' % s.stop_seconds


@test
def sigterm_with_idle_keepalive_connections_exits_0_quickly():
    s = Server()
    socks = []
    try:
        for _ in range(5):
            c = harness.connect(s.port)
            c.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            harness.read_response(c, timeout=10)
            socks.append(c)
        rc = s.stop(timeout=20)
    finally:
        for c in socks:
            c.close()
    assert rc == 0, 'exit status %s\n%s' % (rc, s.crash_excerpt())
    assert s.stop_seconds < 10, 'took %.1f s to stop' % s.stop_seconds


@test
def request_in_flight_during_sigterm_gets_its_answer():
    s = Server()
    data = harness.read_bytes(corpus('photos/22mp-canon-5d3-5760x3840.jpg'))
    sock = harness.connect(s.port, timeout=60)
    try:
        sock.sendall(('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
                      'Content-Length: %d\r\nX-Request-Id: e2e-sigterm\r\n\r\n'
                      % len(data)).encode() + data)
        time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        s._stopping = True
        t0 = time.monotonic()
        try:
            st, h, b = harness.read_response(sock, timeout=60)
        except Exception as e:
            raise AssertionError('no answer to the request in flight: %r\n%s' % (
                e, s.crash_excerpt()))
    finally:
        sock.close()
    try:
        rc = s.proc.wait(30)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    s.stop()
    assert st in (201, 503), describe(st, h, b)
    if st == 503:
        check_problem(st, h, b, 503)
    assert rc == 0, 'exit status %s after SIGTERM\n%s' % (rc, s.crash_excerpt())
    assert took < 30, 'took %.1f s' % took
    if st == 201:
        img = json.loads(b)
        assert img['sha256'] == sha256(data)
        s.start()
        st2, h2, b2 = s.get('/v1/images/' + img['id'])
        assert st2 == 200 and sha256(b2) == img['sha256'], \
            'the 201 given during shutdown was not durable\n' + describe(st2, h2, b2[:200])
        s.stop()


@test
def new_connections_are_refused_or_answered_503_after_sigterm():
    s = Server()
    data = harness.read_bytes(corpus('photos/22mp-canon-5d3-5760x3840.jpg'))
    sock = harness.connect(s.port, timeout=60)
    try:
        sock.sendall(('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
                      'Content-Length: %d\r\n\r\n' % len(data)).encode() + data)
        time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        s._stopping = True
        time.sleep(0.3)
        if s.proc.poll() is None:
            try:
                st, h, b = s.request('GET', '/healthz', timeout=10)
                assert st in (200, 503), describe(st, h, b)
            except (OSError, http.client.HTTPException):
                pass  # refused: fine
        try:
            harness.read_response(sock, timeout=60)
        except Exception:
            pass
    finally:
        sock.close()
    try:
        rc = s.proc.wait(30)
    except subprocess.TimeoutExpired:
        rc = None
    s.stop()
    assert rc == 0, 'exit status %s\n%s' % (rc, s.crash_excerpt())


if __name__ == '__main__':
    harness.run()
