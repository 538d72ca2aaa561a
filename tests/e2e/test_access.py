#!/usr/bin/env python3
"""End-to-end: access control (API keys, signed variant URLs, the sign
command, SIGHUP reload) and the Prometheus text of /metrics."""

import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, check_problem  # noqa: E402

PHOTO = corpus('photos/small-rocket-640x427.jpg')
KEY = 'k-0123456789abcdef'
SIGNING = 's3cret-signing-key'

_srv = None
_img = None


def srv():
    global _srv, _img
    if _srv is None:
        d = harness.mkdtemp()
        keyfile = os.path.join(d, 'keys')
        with open(keyfile, 'w') as f:
            f.write('# operators\nfile-key-1\n')
        _srv = Server(['--api-key', KEY, '--api-keys-file', keyfile,
                       '--signing-key', SIGNING])
        _srv.keyfile = keyfile
        _img = upload_with(KEY)
    return _srv


def upload_with(key):
    st, h, b = _srv.request('POST', '/v1/images', harness.read_bytes(PHOTO),
                            {'Content-Type': 'image/jpeg', 'Authorization': 'Bearer ' + key})
    assert st == 201, harness.describe(st, h, b)
    import json
    return json.loads(b)


def auth(key):
    return {'Authorization': 'Bearer ' + key}


def expect_401(st, h, b):
    check_problem(st, h, b, 401, 'unauthorized')
    assert h.get('www-authenticate', '').startswith('Bearer'), 'no WWW-Authenticate: Bearer'


def sign(path_query, key=SIGNING):
    r = subprocess.run([harness.BIN, 'sign', '--signing-key', key, path_query],
                       capture_output=True, text=True, timeout=30,
                       env=harness._clean_env(None))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


GUARDED = [
    ('POST', '/v1/images', {'Content-Type': 'image/jpeg'}, b'xx'),
    ('GET', '/v1/images', {}, None),
    ('DELETE', '/v1/images/%s', {}, None),
    ('POST', '/v1/transform?w=10', {'Content-Type': 'image/jpeg'}, b'xx'),
    ('POST', '/v1/jobs', {'Content-Type': 'application/json'}, b'{}'),
    ('GET', '/v1/jobs', {}, None),
    ('GET', '/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA', {}, None),
    ('DELETE', '/v1/jobs/AAAAAAAAAAAAAAAAAAAAAA', {}, None),
]


@test
def every_guarded_route_is_401_without_a_key_and_with_a_wrong_one():
    s = srv()
    for method, path, headers, body in GUARDED:
        p = path % _img['id'] if '%s' in path else path
        st, h, b = s.request(method, p, body, dict(headers))
        expect_401(st, h, b)
        st, h, b = s.request(method, p, body, dict(headers, **auth('wrong')))
        expect_401(st, h, b)
    # The image is still there: the refused DELETE did nothing.
    st, h, b = s.request('GET', '/v1/images/%s' % _img['id'])
    assert st == 200 and harness.sha256(b) == _img['sha256']


@test
def refusal_comes_before_404_and_413():
    s = srv()
    st, h, b = s.request('DELETE', '/v1/images/AAAAAAAAAAAAAAAAAAAAAA')
    expect_401(st, h, b)
    st, h, b = s.request('POST', '/v1/images', None,
                         {'Content-Type': 'image/jpeg', 'Content-Length': str(10 << 30)})
    expect_401(st, h, b)


@test
def a_valid_key_from_the_flag_or_the_file_is_accepted():
    s = srv()
    for key in (KEY, 'file-key-1'):
        st, h, b = s.request('GET', '/v1/images', None, auth(key))
        assert st == 200, harness.describe(st, h, b)


@test
def open_routes_need_no_key():
    s = srv()
    for path in ('/v1/images/%s' % _img['id'], '/v1/images/%s/info' % _img['id'],
                 '/healthz', '/readyz', '/metrics'):
        st, h, b = s.request('GET', path)
        assert st == 200, '%s: %s' % (path, harness.describe(st, h, b))


@test
def variants_need_a_valid_signature():
    s = srv()
    path = '/v1/images/%s?w=100&q=70' % _img['id']
    st, h, b = s.request('GET', path)
    expect_401(st, h, b)
    signed = sign(path)
    st, h, b = s.request('GET', signed)
    assert st == 200, harness.describe(st, h, b)
    assert harness.decode_check(b, '.jpg')['width'] == 100
    # Parameter order does not matter: the signed text is sorted.
    reordered = '/v1/images/%s?q=70&w=100&%s' % (_img['id'], signed.split('&')[-1])
    st, h, b = s.request('GET', reordered)
    assert st == 200, harness.describe(st, h, b)
    # Another key's signature, a tampered parameter and garbage are refused.
    st, h, b = s.request('GET', sign(path, 'other-key'))
    expect_401(st, h, b)
    st, h, b = s.request('GET', signed.replace('w=100', 'w=101'))
    expect_401(st, h, b)
    st, h, b = s.request('GET', path + '&sig=AAAA')
    expect_401(st, h, b)
    # A valid API key needs no signature.
    st, h, b = s.request('GET', path, None, auth(KEY))
    assert st == 200, harness.describe(st, h, b)


@test
def sign_agrees_with_the_readme_openssl_one_liner():
    if shutil.which('openssl') is None or shutil.which('basenc') is None:
        raise harness.Skip('openssl or basenc missing')
    path = '/v1/images/ABC?w=800&q=80'
    url = sign(path)
    ours = url.rsplit('sig=', 1)[1]
    # README: printf '%s' "/v1/images/ID?q=80&w=800" | openssl dgst -sha256 -hmac KEY -binary
    #         | basenc --base64url | tr -d '='
    r = subprocess.run("printf '%s' '/v1/images/ABC?q=80&w=800' | openssl dgst -sha256 "
                       "-hmac '" + SIGNING + "' -binary | basenc --base64url | tr -d '='",
                       shell=True, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ours, 'openssl %r != sign %r' % (r.stdout.strip(), ours)


@test
def sighup_rereads_the_keys_file():
    s = srv()
    st, h, b = s.request('GET', '/v1/images', None, auth('file-key-2'))
    expect_401(st, h, b)
    with open(s.keyfile, 'w') as f:
        f.write('file-key-2\n')
    os.kill(s.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st, h, b = s.request('GET', '/v1/images', None, auth('file-key-2'))
        if st == 200:
            break
        time.sleep(0.1)
    assert st == 200, 'the new key is not accepted after SIGHUP'
    st, h, b = s.request('GET', '/v1/images', None, auth('file-key-1'))
    expect_401(st, h, b)
    st, h, b = s.request('GET', '/v1/images', None, auth(KEY))
    assert st == 200, 'the --api-key key was lost on reload'


@test
def metrics_pass_promtool_and_counters_move():
    s = srv()

    def scrape():
        st, h, b = s.request('GET', '/metrics')
        assert st == 200
        assert h.get('content-type', '').startswith('text/plain')
        return b.decode()

    def value(text, prefix):
        total = 0.0
        for line in text.splitlines():
            if line.startswith(prefix):
                total += float(line.rsplit(' ', 1)[1])
        return total

    before = scrape()
    for _ in range(3):
        s.request('GET', '/healthz')
    s.request('GET', sign('/v1/images/%s?w=64' % _img['id']))
    after = scrape()
    hz = 'http_requests_total{route="healthz",method="GET",status="200"}'
    assert value(after, hz) >= value(before, hz) + 3, 'healthz counter did not move'
    for family in ('http_request_duration_seconds_bucket', 'image_server_variant_cache_total',
                   'image_server_jobs{', 'image_server_vips_memory_bytes',
                   'image_server_processing_queue_depth', 'http_response_bytes_total'):
        assert family in after, '%s missing from /metrics' % family
    promtool = shutil.which('promtool')
    if promtool is None:
        raise AssertionError('promtool (Debian package prometheus) is not installed')
    r = subprocess.run([promtool, 'check', 'metrics'], input=after, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, 'promtool check metrics failed:\n%s%s' % (r.stdout, r.stderr)


@test
def stop_server():
    if _srv:
        _srv.stop()


if __name__ == '__main__':
    harness.run()
