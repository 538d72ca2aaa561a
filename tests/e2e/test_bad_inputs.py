#!/usr/bin/env python3
"""End-to-end: hostile and broken uploads are refused with the right
problem, never take the server down and never lose stored data; body
size limits."""

import glob
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, add_test, corpus, check_problem, describe, sha256, MiB  # noqa: E402

_srv = None
_before = []     # (image JSON, bytes) uploaded before the bad batch
_accepted = []   # ids accepted during the bad batch (gif-screen may be)

GOOD = ['photos/small-rocket-640x427.jpg', 'formats/car-rgba-transparent-800x533.png',
        'formats/car-animated-8frames.gif']


def srv():
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server()
        del _before[:]
        for rel in GOOD:
            data = harness.read_bytes(corpus(rel))
            _before.append((_srv.upload_ok(corpus(rel)), data))
    return _srv


SLOW = 20.0  # seconds; every refusal comes from the header or a small decode


def bad_upload(data, ctype, multipart=False):
    s = srv()
    t0 = time.monotonic()
    if multipart:
        st, h, b = s.upload_multipart([('file', data, 'upload.bin', ctype)], timeout=60)
    else:
        st, h, b = s.upload(data, ctype, timeout=60)
    took = time.monotonic() - t0
    return st, h, b, took


def after_checks(s, took, what):
    assert s.alive(), 'server died after %s\n%s' % (what, s.crash_excerpt())
    assert s.healthy(), 'server unhealthy after %s' % what
    assert took < SLOW, '%s took %.1f s to refuse' % (what, took)


BAD = [
    ('bad/page.html', 'image/jpeg', 415, 'unsupported-media-type'),
    ('bad/text-named.jpg', 'image/jpeg', 415, 'unsupported-media-type'),
    ('bad/empty.jpg', 'image/jpeg', 415, 'unsupported-media-type'),
    ('bad/document.pdf', 'image/jpeg', 415, 'unsupported-media-type'),
    ('bad/document.pdf', 'image/png', 415, 'unsupported-media-type'),
]
BAD += [(os.path.relpath(p, harness.CORPUS), 'image/svg+xml', 415, 'unsupported-media-type')
        for p in sorted(glob.glob(corpus('bad/*.svg')))]
BAD += [
    ('formats/drawing.svg', 'image/svg+xml', 415, 'unsupported-media-type'),
    ('formats/drawing.svg', 'image/png', 415, 'unsupported-media-type'),
    ('bad/truncated-50pct.jpg', 'image/jpeg', 422, 'invalid-image'),
    ('bad/truncated-50pct.png', 'image/png', 422, 'invalid-image'),
    ('bad/bomb-100000x100000.png', 'image/png', 422, 'image-too-large'),
    ('bad/jpeg-sof-65000x65000.jpg', 'image/jpeg', 422, 'image-too-large'),
    ('bad/gif-frame-65535x65535.gif', 'image/gif', 422, 'image-too-large'),
]


@test
def good_images_uploaded_before_the_bad_batch():
    s = srv()
    assert len(_before) == len(GOOD)
    for img, data in _before:
        assert img['sha256'] == sha256(data)


def _bad_test(rel, ctype, status, slug, multipart):
    def fn():
        s = srv()
        data = harness.read_bytes(corpus(rel))
        st, h, b, took = bad_upload(data, ctype, multipart)
        if st == 201:
            _accepted.append(json.loads(b)['id'])
        check_problem(st, h, b, status, slug)
        after_checks(s, took, rel)
    return fn


for _rel, _ctype, _st, _slug in BAD:
    for _mp in (False, True):
        add_test('%s sent as %s%s is %d %s' % (_rel, _ctype, ' (multipart)' if _mp else '',
                                               _st, _slug),
                 _bad_test(_rel, _ctype, _st, _slug, _mp))


@test
def gif_screen_65535_is_refused_or_served_as_1x1():
    s = srv()
    data = harness.read_bytes(corpus('bad/gif-screen-65535x65535.gif'))
    st, h, b, took = bad_upload(data, 'image/gif')
    after_checks(s, took, 'gif-screen-65535x65535.gif')
    if st == 201:
        img = json.loads(b)
        _accepted.append(img['id'])
        assert (img['width'], img['height'], img['format']) == (1, 1, 'gif'), img
        st, h, b2 = s.get('/v1/images/' + img['id'])
        assert st == 200 and b2 == data, describe(st, h, b2)
        st, h, b2 = s.get('/v1/images/%s/info' % img['id'])
        assert st == 200, describe(st, h, b2)
        inf = json.loads(b2)
        assert (inf['width'], inf['height']) == (1, 1), inf
        s.request('DELETE', '/v1/images/' + img['id'])
        _accepted.remove(img['id'])
    else:
        assert 400 <= st < 500, describe(st, h, b)
        check_problem(st, h, b, st)


def _garbage_cases():
    rnd = random.Random(1234)

    def rb(n):
        return bytes(rnd.getrandbits(8) for _ in range(n))

    return [
        ('64 KiB of random bytes', rb(65536), 'image/jpeg', (415,)),
        ('JPEG SOI then random bytes', b'\xff\xd8\xff\xe0' + rb(4096), 'image/jpeg', (415, 422)),
        ('JPEG SOI only', b'\xff\xd8\xff', 'image/jpeg', (415, 422)),
        ('PNG signature only', b'\x89PNG\r\n\x1a\n', 'image/png', (415, 422)),
        ('PNG signature then random bytes', b'\x89PNG\r\n\x1a\n' + rb(4096), 'image/png',
         (415, 422)),
        ('GIF89a header only', b'GIF89a', 'image/gif', (415, 422)),
        ('RIFF WEBP header only', b'RIFF\x10\x00\x00\x00WEBPVP8 ', 'image/webp', (415, 422)),
        ('TIFF header then random bytes', b'II*\x00' + rb(2048), 'image/tiff', (415, 422)),
        ('HEIC ftyp box only', b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic',
         'image/heic', (415, 422)),
        ('AVIF ftyp box then random bytes',
         b'\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf' + rb(4096), 'image/avif',
         (415, 422)),
        ('a single NUL byte', b'\x00', 'image/jpeg', (415,)),
        ('BMP file', b'BM' + rb(200), 'image/bmp', (415,)),
        ('PGM file', b'P5\n2 2\n255\n\x00\x01\x02\x03', 'image/x-portable-graymap', (415,)),
        ('gzip of a JPEG', b'\x1f\x8b\x08\x00' + rb(1000), 'image/jpeg', (415,)),
        ('a vips native file header', b'\x08\xf2\xa6\xb6' + rb(200), 'image/jpeg', (415, 422)),
        ('FITS header', b'SIMPLE  =                    T' + b' ' * 50, 'image/fits', (415, 422)),
        ('Matlab file', b'MATLAB 5.0 MAT-file' + rb(200), 'image/jpeg', (415, 422)),
    ]


def _garbage_test(name, data, ctype, statuses):
    def fn():
        s = srv()
        st, h, b, took = bad_upload(data, ctype)
        if st == 201:
            _accepted.append(json.loads(b)['id'])
        check_problem(st, h, b, statuses)
        after_checks(s, took, name)
    return fn


for _name, _data, _ctype, _sts in _garbage_cases():
    add_test('%s is refused (%s)' % (_name, '/'.join(map(str, _sts))),
             _garbage_test(_name, _data, _ctype, _sts))


def _cut_test(rel, frac):
    def fn():
        src = corpus(rel)
        data = harness.read_bytes(src)[:int(os.path.getsize(src) * frac)]
        d = harness.mkdtemp('image-server-e2e-cut-')
        p = os.path.join(d, 'cut' + os.path.splitext(rel)[1])
        with open(p, 'wb') as f:
            f.write(data)
        header_ok = subprocess.run(['vipsheader', p], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL).returncode == 0
        s = srv()
        st, h, b, took = bad_upload(data, harness.content_type_for_path(rel))
        if st == 201:
            _accepted.append(json.loads(b)['id'])
        if header_ok:
            # the header reads fine, the pixels are missing: corrupt image data
            check_problem(st, h, b, 422, 'invalid-image')
        else:
            check_problem(st, h, b, (415, 422), ('unsupported-media-type', 'invalid-image'))
        after_checks(s, took, '%s cut to %d%%' % (rel, frac * 100))
    return fn


for _rel in ('formats/car-rgb-800x533.png', 'formats/car-progressive-800x533.jpg',
             'formats/car-lossy-800x533.webp', 'formats/car-lossless-rgba-800x533.webp',
             'formats/car-800x533.heic', 'formats/car-800x533.avif',
             'formats/car-lzw-800x533.tif', 'photos/small-nikon-e950-800x600.jpg'):
    for _frac in (0.5, 0.9):
        add_test('%s cut to %d%% is refused' % (_rel, _frac * 100), _cut_test(_rel, _frac))


@test
def nothing_refused_was_stored():
    s = srv()
    st, h, b = s.get('/v1/images?limit=1000')
    assert st == 200, describe(st, h, b)
    ids = {i['id'] for i in json.loads(b)['items']}
    want = {img['id'] for img, _ in _before}
    extra = ids - want
    assert not extra, 'refused uploads were stored: %s (accepted during the batch: %s)' % (
        sorted(extra), _accepted)


@test
def images_uploaded_before_still_download_identical():
    s = srv()
    assert s.alive()
    for img, data in _before:
        st, h, b = s.get('/v1/images/' + img['id'])
        assert st == 200 and sha256(b) == sha256(data), 'image %s changed or lost\n%s' % (
            img['id'], describe(st, h, b[:200]))
        st, h, b = s.get('/v1/images/%s/info' % img['id'])
        assert st == 200, describe(st, h, b)
    img = s.upload_ok(corpus('photos/small-canon-ixus-640x480.jpg'))
    assert img['width'] == 640


# ---------------------------------------------------------------------------
# body size
# ---------------------------------------------------------------------------

_small = None


def small_srv():
    global _small
    if _small is None or not _small.alive():
        _small = Server(['--max-body-bytes', '1MiB'])
    return _small


def png_of_size(total, seed=5):
    """A valid PNG of exactly `total` bytes (a padded tEXt chunk)."""
    base = harness.make_png(64, 48, seed=seed, text='')
    pad = total - len(base)
    assert pad >= 0
    data = harness.make_png(64, 48, seed=seed, text='x' * pad)
    assert len(data) == total, (len(data), total)
    return data


def zeros(total, chunk=65536):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        sent += n
        yield b'\0' * n


@test
def body_over_max_body_bytes_with_content_length_is_413():
    s = small_srv()
    size = 2 * MiB
    head = ('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
            'Content-Length: %d\r\n\r\n' % size).encode()
    r = harness.send_streaming(s.port, head, zeros(size), deadline_s=30)
    assert r['status'] is not None, 'no answer: %s (sent %d bytes)' % (r['error'], r['sent'])
    check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')
    assert s.healthy(), 'server unhealthy after the 413'


@test
def body_over_limit_with_expect_100_continue_is_413_without_the_body():
    s = small_srv()
    sock = harness.connect(s.port)
    try:
        sock.sendall(('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
                      'Content-Length: %d\r\nExpect: 100-continue\r\n\r\n' % (2 * MiB)).encode())
        st, h, b = harness.read_response(sock, timeout=10)
    finally:
        sock.close()
    check_problem(st, h, b, 413, 'payload-too-large')


@test
def multipart_over_max_body_bytes_is_413():
    s = small_srv()
    body, ctype = harness.multipart([('file', b'\0' * (2 * MiB), 'big.jpg', 'image/jpeg')])
    head = ('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n'
            'Content-Length: %d\r\n\r\n' % (ctype, len(body))).encode()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    r = harness.send_streaming(s.port, head, chunks, deadline_s=30)
    assert r['status'] is not None, 'no answer: %s' % r['error']
    check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')


@test
def body_of_exactly_max_body_bytes_is_accepted_one_more_is_413():
    s = small_srv()
    data = png_of_size(MiB)
    st, h, b = s.upload(data, 'image/png')
    assert st == 201, describe(st, h, b)
    data = png_of_size(MiB + 1, seed=6)
    head = ('POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n'
            'Content-Length: %d\r\n\r\n' % len(data)).encode()
    chunks = (data[i:i + 65536] for i in range(0, len(data), 65536))
    r = harness.send_streaming(s.port, head, chunks, deadline_s=30)
    assert r['status'] is not None, 'no answer: %s' % r['error']
    check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')


@test
def chunked_upload_under_the_limit_works():
    s = small_srv()
    data = harness.read_bytes(corpus('formats/car-rgb-800x533.png'))
    assert len(data) < MiB
    head = (b'POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n'
            b'Transfer-Encoding: chunked\r\n\r\n')

    def chunks():
        for i in range(0, len(data), 10000):
            c = data[i:i + 10000]
            yield b'%x\r\n' % len(c) + c + b'\r\n'
        yield b'0\r\n\r\n'

    r = harness.send_streaming(s.port, head, chunks(), deadline_s=60, first_wait=0.2)
    assert r['status'] == 201, 'chunked upload: %s\n%s' % (
        r['error'], describe(r['status'], r['headers'] or {}, r['body'] or b''))
    img = json.loads(r['body'])
    assert img['sha256'] == sha256(data) and img['bytes'] == len(data), img


@test
def chunked_body_over_the_limit_is_413_or_cut():
    s = small_srv()
    head = (b'POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n'
            b'Transfer-Encoding: chunked\r\n\r\n')

    def chunks():
        c = b'\0' * 65536
        for _ in range(32):  # 2 MiB
            yield b'%x\r\n' % len(c) + c + b'\r\n'
        yield b'0\r\n\r\n'

    r = harness.send_streaming(s.port, head, chunks(), deadline_s=30, first_wait=0.2)
    if r['status'] is not None:
        check_problem(r['status'], r['headers'], r['body'], 413, 'payload-too-large')
    else:
        assert r['cut'], 'neither an answer nor a cut connection: %s' % r
    assert s.healthy(), 'server unhealthy afterwards'


@test
def body_limit_server_keeps_serving():
    s = small_srv()
    img = s.upload_ok(corpus('photos/small-rocket-640x427.jpg'))
    st, h, b = s.get('/v1/images/' + img['id'])
    assert st == 200 and sha256(b) == img['sha256'], describe(st, h, b[:100])


if __name__ == '__main__':
    harness.run()
