#!/usr/bin/env python3
"""End-to-end: the stateless POST /v1/transform and the command
`image-server transform IN OUT 'QUERY'` (DESIGN §3): same parser, same
executor, same detail texts; outputs decoded and checked; encode times per
format reported as diagnostics."""

import glob
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, add_test, corpus, check_problem, describe  # noqa: E402

CAR_PNG = corpus('formats/car-rgb-800x533.png')
RGBA_PNG = corpus('formats/car-rgba-transparent-800x533.png')
GIF8 = corpus('formats/car-animated-8frames.gif')
ROCKET = corpus('photos/small-rocket-640x427.jpg')
LAND6 = corpus('orientation/landscape_6.jpg')
CAR12 = corpus('photos/12mp-canon-450d-car-4272x2848.jpg')
BAD = sorted(p for p in glob.glob(os.path.join(harness.CORPUS, 'bad', '*')) if os.path.isfile(p))
# gif-screen: a 65535x65535 logical screen holding one 1x1 frame. The corpus
# allows "reject or 1x1" (the upload tests accept either).
MAY_DECODE = {'gif-screen-65535x65535.gif'}

LOADERS = {'jpegload': 'jpeg', 'pngload': 'png', 'webpload': 'webp', 'gifload': 'gif',
           'tiffload': 'tiff', 'heifload': 'heif'}
SUFFIX = {'image/jpeg': '.jpg', 'image/png': '.png', 'image/webp': '.webp',
          'image/gif': '.gif', 'image/tiff': '.tif', 'image/avif': '.avif'}

_srv = None


def srv():
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server()
    return _srv


_tmp = []
_n = [0]


def tmp(name):
    if not _tmp:
        _tmp.append(harness.mkdtemp('image-server-e2e-tr-'))
    _n[0] += 1
    d = os.path.join(_tmp[0], 'd%04d' % _n[0])
    os.mkdir(d)
    return os.path.join(d, name)


def run_transform(src, out, query, binary=None, timeout=120):
    """Runs `image-server transform src out query`; returns (exit status,
    stderr text, seconds)."""
    args = [binary or harness.BIN, 'transform', src, out, query]
    t0 = time.monotonic()
    try:
        r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=harness._clean_env(None),
                           timeout=timeout, cwd=os.path.dirname(out) or None)
    except subprocess.TimeoutExpired:
        raise AssertionError('`%s` still running after %d s' % (' '.join(args), timeout))
    took = time.monotonic() - t0
    err = r.stderr.decode('utf-8', 'replace')
    if harness.SANITIZER_RE.search(err):
        raise AssertionError('sanitizer report from `%s`:\n%s' % (' '.join(args),
                                                                  harness._excerpt(err)))
    return r.returncode, err, took


def show(rc, err):
    return 'exit status %s\nstderr:\n%s' % (rc, err[-2000:])


def decode(path):
    info = harness.probe(path)
    fmt = LOADERS.get(info['loader'], info['loader'])
    if fmt == 'heif':
        fmt = harness.heif_brand(path)
    return fmt, info


def transform_ok(src, ext, query, want_fmt, want_size):
    out = tmp('out' + ext)
    rc, err, _ = run_transform(src, out, query)
    assert rc == 0, 'transform %s %s %r\n%s' % (harness.label(src), ext, query, show(rc, err))
    assert os.path.exists(out), 'exit 0 but no output file'
    fmt, info = decode(out)
    assert fmt == want_fmt, '%s %r: wrote %s, expected %s' % (ext, query, fmt, want_fmt)
    assert (info['width'], info['height']) == want_size, '%s %r: %dx%d, expected %dx%d' % (
        ext, query, info['width'], info['height'], *want_size)
    return out, info


def vips(*args):
    r = subprocess.run(['vips'] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, 'vips %s: %s' % (' '.join(map(str, args)), r.stderr.decode())
    return r.stdout.decode().strip()


def mad(a, b):
    s, t = tmp('s.v'), tmp('t.v')
    vips('subtract', a, b, s)
    vips('abs', s, t)
    return float(vips('avg', t))


def post_transform(query, data, ctype, headers=None, s=None):
    h = {'Content-Type': ctype}
    h.update(headers or {})
    return (s or srv()).request('POST', '/v1/transform' + ('?' + query if query else ''),
                                body=data, headers=h, timeout=120)


def api_detail(query, data=None, ctype='image/png'):
    """The API's problem for query (and body), as (status, type, detail)."""
    if data is None:
        data = harness.read_bytes(CAR_PNG)
    st, h, b = post_transform(query, data, ctype)
    assert st != 200, 'POST /v1/transform?%s answered 200' % query
    p = check_problem(st, h, b, st)
    return st, p['type'], p['detail']


def stderr_detail(err):
    """The command's message lines (libvips warnings left out)."""
    lines = [ln for ln in err.split('\n') if ln.strip() and 'VIPS-WARNING' not in ln
             and not ln.startswith('(')]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# the command: outputs
# ---------------------------------------------------------------------------

EXTS = [('.png', 'png'), ('.webp', 'webp'), ('.avif', 'avif'), ('.jpg', 'jpeg'),
        ('.jpeg', 'jpeg'), ('.gif', 'gif'), ('.tif', 'tiff'), ('.tiff', 'tiff'),
        ('.PNG', 'png')]


def _ext_test(ext, fmt):
    def fn():
        transform_ok(CAR_PNG, ext, 'w=200', fmt, (200, 133))
    return fn


for _e, _f in EXTS:
    add_test('transform to %s writes %s' % (_e, _f), _ext_test(_e, _f))


@test
def format_in_the_query_beats_the_extension():
    transform_ok(CAR_PNG, '.png', 'w=200&format=webp', 'webp', (200, 133))
    transform_ok(ROCKET, '.out', 'w=100&format=avif', 'avif', (100, 67))


@test
def transform_applies_the_query():
    transform_ok(CAR_PNG, '.png', 'w=800&rotate=90', 'png', (533, 800))
    transform_ok(CAR_PNG, '.png', '?w=400&h=400&fit=cover', 'png', (400, 400))
    transform_ok(CAR_PNG, '.png', 'w=1000&h=1000&fit=contain', 'png', (800, 800))
    transform_ok(CAR_PNG, '.png', 'crop=10,10,300,100&flip=v', 'png', (300, 100))
    transform_ok(CAR_PNG, '.png', 'w=1600&enlarge=1', 'png', (1600, 1066))
    transform_ok(LAND6, '.png', 'w=300', 'png', (300, 200))
    out, info = transform_ok(RGBA_PNG, '.webp', 'w=200', 'webp', (200, 133))
    assert info['bands'] == 4, 'alpha lost'
    out, info = transform_ok(RGBA_PNG, '.jpg', 'w=200', 'jpeg', (200, 133))
    assert info['bands'] == 3
    out, info = transform_ok(GIF8, '.webp', 'w=120', 'webp', (120, 80))
    assert info['pages'] == 8, 'animation lost: %d pages' % info['pages']
    out, info = transform_ok(GIF8, '.png', 'w=120', 'png', (120, 80))
    assert info['pages'] == 1


@test
def heif_sources_with_resize_and_more_steps():
    # The shrink-on-load path followed by another step, into encoders that
    # read the ICC profile the HEIF loader attached (run_transform fails on
    # any sanitizer report).
    bad = []
    for src in (corpus('formats/car-800x533.avif'), corpus('formats/car-800x533.heic')):
        for ext, fmt in (('.png', 'png'), ('.webp', 'webp'), ('.avif', 'avif'),
                         ('.jpg', 'jpeg')):
            for query in ('w=300&rotate=180', 'w=300&flip=h'):
                try:
                    transform_ok(src, ext, query, fmt, (300, 200))
                except AssertionError as e:
                    msg = str(e) if not bad else str(e).split('\n')[0]
                    bad.append('%s -> %s %r: %s' % (os.path.basename(src), ext, query,
                                                   msg[:4000]))
    assert not bad, '\n'.join(bad)


@test
def empty_query_converts_the_format():
    out, info = transform_ok(CAR_PNG, '.webp', '', 'webp', (800, 533))


@test
def command_and_api_give_the_same_pixels():
    for src, ctype, query in ((LAND6, 'image/jpeg', 'w=300&rotate=90&format=png'),
                              (CAR_PNG, 'image/png', 'w=400&h=300&fit=cover&gravity=north'),
                              (ROCKET, 'image/jpeg', 'crop=20,30,200,100&blur=2&format=png')):
        out = tmp('cmd.png')
        rc, err, _ = run_transform(src, out, query)
        assert rc == 0, show(rc, err)
        st, h, b = post_transform(query, harness.read_bytes(src), ctype)
        assert st == 200, describe(st, h, b)
        api = tmp('api.png')
        with open(api, 'wb') as f:
            f.write(b)
        fa, ia = decode(api)
        fc, ic = decode(out)
        assert (fa, ia['width'], ia['height']) == (fc, ic['width'], ic['height']), \
            'API %s %dx%d, command %s %dx%d' % (fa, ia['width'], ia['height'], fc,
                                                ic['width'], ic['height'])
        d = mad(api, out)
        assert d == 0, '%r: API and command pixels differ by %.3f' % (query, d)


# ---------------------------------------------------------------------------
# the command: errors
# ---------------------------------------------------------------------------

BAD_QUERIES = ['w=100001', 'w=0', 'w=10&fit=bogus', 'unknown=1', 'w=1&w=2', 'rotate=400',
               'flip=x', 'format=bmp', 'q=0', 'crop=1,2', 'blur=0', 'bg=00ff00', 'w=10&h']


def _bad_query_test(query):
    def fn():
        st, typ, detail = api_detail(query)
        assert (st, typ) == (400, '/problems/invalid-operation'), (st, typ, detail)
        out = tmp('o.png')
        rc, err, _ = run_transform(CAR_PNG, out, query)
        assert rc == 2, 'bad query %r: expected exit 2\n%s' % (query, show(rc, err))
        assert detail in err, 'stderr lacks the API detail %r\n%s' % (detail, show(rc, err))
        assert not os.path.exists(out), 'a bad query wrote the output file'
    return fn


for _q in BAD_QUERIES:
    add_test('bad query %r exits 2 with the API detail' % _q, _bad_query_test(_q))


@test
def crop_outside_and_absurd_output_exit_1_with_the_api_detail():
    for query, status, typ in (('crop=700,0,200,10', 400, '/problems/invalid-operation'),
                               ('w=100000&h=100000&fit=fill&enlarge=1', 422,
                                '/problems/image-too-large')):
        st, t, detail = api_detail(query)
        assert (st, t) == (status, typ), (query, st, t, detail)
        out = tmp('o.png')
        rc, err, took = run_transform(CAR_PNG, out, query)
        # The query parses; the image decides: exit 2 (query) or 1 (image)
        # are both defensible for a crop outside; the text must match.
        assert rc in ((1, 2) if status == 400 else (1,)), '%r\n%s' % (query, show(rc, err))
        assert detail in err, 'stderr lacks the API detail %r\n%s' % (detail, show(rc, err))
        assert took < 10, 'refusing took %.1f s' % took
        assert not os.path.exists(out)


def _bad_image_test(path, query):
    name = os.path.basename(path)

    def fn():
        data = harness.read_bytes(path)
        ctype = harness.content_type_for_path(path)
        s = srv()
        ust, uh, ub = s.upload(data, ctype)
        st, h, b = post_transform(query, data, ctype)
        out = tmp('o.png')
        rc, err, _ = run_transform(path, out, query)
        if name in MAY_DECODE and st == 200:
            assert ust == 201, 'transform accepts it, upload does not\n' + describe(ust, uh, ub)
            assert rc == 0, 'the API transforms %s, the command does not\n%s' % (
                name, show(rc, err))
            return
        wrong = []
        if st not in (415, 422):
            wrong.append('POST /v1/transform?%s answered %s (expected 415/422; upload '
                         'answers %s)\n%s' % (query, st, ust, describe(
                             st, h, b, limit=0 if st == 200 else 800)))
        if rc != 1:
            wrong.append('`transform bad/%s o.png %s` exited %d (expected 1)\n%s' % (
                name, query, rc, show(rc, err)))
        assert not wrong, '\n'.join(wrong)
        p = check_problem(st, h, b, st)
        if ust != 201:
            up = check_problem(ust, uh, ub, ust)
            assert (st, p['type']) == (ust, up['type']), \
                'upload says %d %s, transform %d %s' % (ust, up['type'], st, p['type'])
        assert p['detail'] in err, 'stderr lacks the API detail %r\n%s' % (
            p['detail'], show(rc, err))
        assert not os.path.exists(out)
    return fn


for _p in BAD:
    for _q in ('w=100', 'format=png'):
        add_test('bad/%s ?%s: API 415/422 and exit 1 with the same detail' % (
            os.path.basename(_p), _q), _bad_image_test(_p, _q))


@test
def missing_file_exits_1():
    out = tmp('o.png')
    rc, err, _ = run_transform(os.path.join(os.path.dirname(out), 'nope.jpg'), out, 'w=10')
    assert rc == 1, show(rc, err)
    assert stderr_detail(err), 'no message on stderr'
    assert not os.path.exists(out)


@test
def usage_errors_exit_2():
    out = tmp('o.xyz')
    rc, err, _ = run_transform(CAR_PNG, out, 'w=10')
    assert rc == 2, 'unknown output extension: %s' % show(rc, err)
    assert not os.path.exists(out)
    r = subprocess.run([harness.BIN, 'transform', CAR_PNG], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=harness._clean_env(None), timeout=30)
    assert r.returncode == 2, 'missing arguments: exit %d' % r.returncode


# ---------------------------------------------------------------------------
# POST /v1/transform
# ---------------------------------------------------------------------------

def decode_answer(st, h, b, ctx):
    assert st == 200, '%s\n%s' % (ctx, describe(st, h, b))
    ctype = h.get('content-type', '').split(';')[0].strip()
    assert ctype in SUFFIX, '%s: Content-Type %r' % (ctx, ctype)
    p = tmp('a' + SUFFIX[ctype])
    with open(p, 'wb') as f:
        f.write(b)
    fmt, info = decode(p)
    assert harness.CONTENT_TYPES.get(fmt) == ctype, '%s: %s bytes labelled %s' % (ctx, fmt,
                                                                                  ctype)
    return fmt, info, p


@test
def post_transform_raw_body_stores_nothing():
    s = Server()
    try:
        st, h, b = post_transform('w=100&rotate=90', harness.read_bytes(CAR_PNG), 'image/png',
                                  s=s)
        fmt, info, _ = decode_answer(st, h, b, 'raw body')
        assert fmt == 'png' and (info['width'], info['height']) == (67, 100), info
        st, h, b = post_transform('w=100&format=webp', harness.read_bytes(ROCKET),
                                  'image/jpeg', s=s)
        fmt, info, _ = decode_answer(st, h, b, 'raw jpeg body')
        assert fmt == 'webp' and (info['width'], info['height']) == (100, 67), info
        lst = s.get_json('/v1/images')
        assert lst['items'] == [], 'POST /v1/transform stored images: %r' % lst['items']
        assert harness.blob_files(s.blobs_dir) == [], 'blobs stored: %r' % harness.blob_files(
            s.blobs_dir)
    finally:
        s.stop()


@test
def post_transform_multipart_field_file():
    body, ctype = harness.multipart([('file', harness.read_bytes(ROCKET), 'r.jpg',
                                      'image/jpeg')])
    st, h, b = srv().request('POST', '/v1/transform?w=200&h=200&fit=cover', body=body,
                             headers={'Content-Type': ctype})
    fmt, info, _ = decode_answer(st, h, b, 'multipart')
    assert fmt == 'jpeg' and (info['width'], info['height']) == (200, 200), info


@test
def post_transform_bad_query_is_400_whatever_the_body():
    for data, ctype in ((b'not an image at all', 'image/jpeg'), (b'', 'image/png'),
                        (harness.read_bytes(corpus('bad/truncated-50pct.jpg')), 'image/jpeg')):
        st, h, b = post_transform('w=0', data, ctype)
        p = check_problem(st, h, b, 400, 'invalid-operation')
        assert re.search(r'\bw\b', p['detail']), p


@test
def post_transform_format_auto_uses_accept():
    data = harness.read_bytes(ROCKET)
    for accept, want in (('image/avif,image/webp', 'avif'), ('image/webp', 'webp'),
                         ('*/*', 'jpeg')):
        st, h, b = post_transform('w=100&format=auto', data, 'image/jpeg',
                                  headers={'Accept': accept})
        fmt, info, _ = decode_answer(st, h, b, 'auto %s' % accept)
        assert fmt == want, 'Accept %r: %s, expected %s' % (accept, fmt, want)
        assert 'accept' in h.get('vary', '').lower(), 'no Vary: Accept'


@test
def post_transform_limits():
    st, h, b = post_transform('w=100000&h=100000&fit=fill&enlarge=1',
                              harness.read_bytes(CAR_PNG), 'image/png')
    check_problem(st, h, b, 422, 'image-too-large')
    st, h, b = post_transform('crop=0,0,801,10', harness.read_bytes(CAR_PNG), 'image/png')
    p = check_problem(st, h, b, 400, 'invalid-operation')
    assert 'crop' in p['detail'], p


# ---------------------------------------------------------------------------
# encode time per format (reported, not asserted)
# ---------------------------------------------------------------------------

def _release_bin():
    if harness.RELEASE_BIN:
        return harness.RELEASE_BIN
    p = os.path.join(harness.REPO, 'build', 'image-server')
    return p if os.access(p, os.X_OK) else None


@test
def encode_time_per_format_for_1200x800():
    bins = [('ASan', harness.BIN)]
    rel = _release_bin()
    if rel and os.path.realpath(rel) != os.path.realpath(harness.BIN):
        bins.insert(0, ('release', rel))
    for label, binary in bins:
        times = {}
        for ext, fmt in (('.jpg', 'jpeg'), ('.png', 'png'), ('.webp', 'webp'), ('.avif', 'avif'),
                         ('.gif', 'gif')):
            best = None
            for _ in range(2 if label == 'release' else 1):
                out = tmp('enc' + ext)
                rc, err, took = run_transform(CAR12, out, 'w=1200', binary=binary)
                assert rc == 0, '%s %s\n%s' % (label, ext, show(rc, err))
                f, info = decode(out)
                assert f == fmt and (info['width'], info['height']) == (1200, 800), \
                    (f, info['width'], info['height'])
                best = took if best is None else min(best, took)
            times[fmt] = (best, os.path.getsize(out))
        base = times['jpeg'][0]
        harness._diag('%s (%s): 12 MP JPEG -> 1200x800, whole command (load, shrink, '
                      'encode), best of %d:' % (label, binary, 2 if label == 'release' else 1))
        for fmt, (t, size) in times.items():
            harness._diag('  %-5s %6.3f s  %8d bytes  (%+.3f s vs jpeg)' % (fmt, t, size,
                                                                           t - base))


if __name__ == '__main__':
    harness.run()
