#!/usr/bin/env python3
"""End-to-end: variants of stored images (GET /v1/images/{id}?w=..), DESIGN §3.

Every result is decoded (vipsheader, `vips getpoint`, `vips avg`) and checked
for size, format, bands and, where it matters, pixels; status codes alone
prove nothing. Pixel-exact checks use small generated PNGs whose every pixel
is different, so a wrong rotation or flip cannot pass by accident."""

import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Server, test, add_test, corpus, check_problem, describe, sha256,  # noqa: E402
                     CONTENT_TYPES, MiB)

CAR_PNG = corpus('formats/car-rgb-800x533.png')          # 800x533 RGB, lossless
RGBA_PNG = corpus('formats/car-rgba-transparent-800x533.png')  # corners transparent
RGB16_PNG = corpus('formats/car-rgb16-800x533.png')
CMYK_JPG = corpus('formats/car-cmyk-800x533.jpg')
P3_JPG = corpus('formats/car-displayp3-icc-800x533.jpg')
GRAY_JPG = corpus('formats/car-gray-800x533.jpg')
PROG_JPG = corpus('formats/car-progressive-800x533.jpg')
GIF8 = corpus('formats/car-animated-8frames.gif')        # 8 frames of 240x160
WEBP8 = corpus('formats/car-animated-8frames.webp')
LOSSY_WEBP = corpus('formats/car-lossy-800x533.webp')
LOSSLESS_WEBP = corpus('formats/car-lossless-rgba-800x533.webp')
TIFF = corpus('formats/car-lzw-800x533.tif')
HEIC = corpus('formats/car-800x533.heic')
AVIF = corpus('formats/car-800x533.avif')
NIKON = corpus('photos/small-nikon-e950-800x600.jpg')    # has EXIF
ROCKET = corpus('photos/small-rocket-640x427.jpg')
STORM = corpus('photos/mid-canon-400d-storm-1920x1280.jpg')

GEN_W, GEN_H = 64, 48   # the generated PNG: pixel (x, y) = (b0+3x, b1+5y, b2+x+y)

LOADERS = {'jpegload': 'jpeg', 'pngload': 'png', 'webpload': 'webp', 'gifload': 'gif',
           'tiffload': 'tiff', 'heifload': 'heif'}

_srv = None
_uploaded = {}


def srv():
    """The shared server (a new one if the previous one died)."""
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server()
    return _srv


def uploaded(src):
    """Image JSON of src (a corpus path or bytes) on the shared server,
    uploaded once."""
    s = srv()
    key = (id(s), src if isinstance(src, str) else sha256(src))
    if key not in _uploaded:
        _uploaded[key] = s.upload_ok(src, content_type=None if isinstance(src, str)
                                     else 'image/png')
    return _uploaded[key]


def gen_png():
    return harness.make_png(GEN_W, GEN_H, seed=7)


_tmp = None


def tmpdir():
    global _tmp
    if _tmp is None:
        _tmp = harness.mkdtemp('image-server-e2e-var-')
    return _tmp


_n = [0]


def save(data, suffix):
    _n[0] += 1
    p = os.path.join(tmpdir(), 'f%04d%s' % (_n[0], suffix))
    with open(p, 'wb') as f:
        f.write(data)
    return p


SUFFIX = {'image/jpeg': '.jpg', 'image/png': '.png', 'image/webp': '.webp',
          'image/gif': '.gif', 'image/tiff': '.tif', 'image/avif': '.avif',
          'image/heic': '.heic'}


def vget(img_id, query, headers=None, s=None):
    s = s or srv()
    path = '/v1/images/%s' % img_id + ('?' + query if query else '')
    return s.get(path, headers=headers)


class Out:
    """A decoded 200 answer: .path (a file), .info (harness.probe), .headers,
    .body, .fmt (from the loader), .ctype."""

    def __init__(self, st, h, b, ctx):
        assert st == 200, '%s: expected 200\n%s' % (ctx, describe(st, h, b))
        self.headers, self.body = h, b
        self.ctype = h.get('content-type', '').split(';')[0].strip()
        assert self.ctype in SUFFIX, '%s: Content-Type %r is not an image type' % (
            ctx, self.ctype)
        self.path = save(b, SUFFIX[self.ctype])
        self.info = harness.probe(self.path)
        loader = self.info['loader']
        self.fmt = LOADERS.get(loader, loader)
        if self.fmt == 'heif':
            self.fmt = harness.heif_brand(self.path)
        assert CONTENT_TYPES.get(self.fmt) == self.ctype, \
            '%s: Content-Type %s but the bytes decode as %s' % (ctx, self.ctype, self.fmt)

    @property
    def size(self):
        return (self.info['width'], self.info['height'])

    def __repr__(self):
        return '%s %dx%d %d bands %d pages' % (self.fmt, self.info['width'], self.info['height'],
                                               self.info['bands'], self.info['pages'])


def variant(src, query, headers=None):
    """GET the variant of src (corpus path or bytes) and decode it."""
    img = uploaded(src)
    st, h, b = vget(img['id'], query, headers)
    return Out(st, h, b, 'GET ?%s of %s' % (query, harness.label(src)))


def vips(*args):
    r = subprocess.run(['vips'] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, 'vips %s failed: %s' % (' '.join(map(str, args)),
                                                     r.stderr.decode('utf-8', 'replace'))
    return r.stdout.decode().strip()


def getpoint(path, x, y):
    return [float(v) for v in vips('getpoint', path, x, y).split()]


def mad(a, b):
    """Mean absolute difference of two decoded images of equal size."""
    d = tmpdir()
    _n[0] += 1
    s, t = os.path.join(d, 's%d.v' % _n[0]), os.path.join(d, 't%d.v' % _n[0])
    vips('subtract', a, b, s)
    vips('abs', s, t)
    v = float(vips('avg', t))
    os.unlink(s)
    os.unlink(t)
    return v


def close(p, q, tol=2.0):
    return len(p) == len(q) and all(abs(a - b) <= tol for a, b in zip(p, q))


def metrics(s):
    st, h, b = s.get('/metrics')
    assert st == 200, describe(st, h, b)
    return b.decode('utf-8', 'replace')


def metric(s, name, labels):
    """Value of one series (0 when absent)."""
    text = metrics(s)
    wants = ['%s{%s} ' % (name, labels)] + (['%s ' % name] if not labels else [])
    for line in text.split('\n'):
        if any(line.startswith(w) for w in wants):
            return float(line.split()[-1])
    return 0.0


def cache_counts(s):
    return {r: metric(s, 'image_server_variant_cache_total', 'result="%s"' % r)
            for r in ('hit', 'miss', 'off')}


# ---------------------------------------------------------------------------
# geometry on an 800x533 source
# ---------------------------------------------------------------------------

GEOMETRY = [
    ('w=400', (400, 267)),
    ('h=200', (300, 200)),
    ('w=1600', (800, 533)),                        # enlarge=0 never upscales
    ('h=1066', (800, 533)),
    ('w=1600&enlarge=1', (1600, 1066)),
    ('h=1066&enlarge=1', (1600, 1066)),
    ('w=400&h=400', (400, 267)),                   # default fit=inside
    ('w=400&h=400&fit=inside', (400, 267)),
    ('w=400&h=400&fit=cover', (400, 400)),
    ('w=400&h=400&fit=contain', (400, 400)),
    ('w=400&h=400&fit=fill', (400, 400)),
    ('w=400&h=400&fit=outside', (600, 400)),
    ('w=1000&h=1000&fit=cover', (533, 533)),       # box shrinks by 533/1000
    ('w=1000&h=1000&fit=contain', (800, 800)),     # box shrinks by 1.25, padded
    ('w=1600&h=400&fit=fill', (800, 200)),         # box shrinks by max(2, 0.75)
    ('w=2000&h=2000&fit=inside', (800, 533)),
    ('w=2000&h=2000&fit=outside', (800, 533)),
    ('w=1000&h=1000&fit=cover&enlarge=1', (1000, 1000)),
    ('w=1000&h=1000&fit=contain&enlarge=1', (1000, 1000)),
    ('w=1600&h=400&fit=fill&enlarge=1', (1600, 400)),
    ('w=2000&h=2000&fit=inside&enlarge=1', (2000, 1333)),
    ('w=1000&h=1000&fit=outside&enlarge=1', (1501, 1000)),
    ('crop=10,20,300,200', (300, 200)),
    ('crop=0,0,400,200&w=100', (100, 50)),          # crop runs before resize
    ('w=100&crop=0,0,400,200', (100, 50)),          # whatever the URL order
    ('rotate=90', (533, 800)),
    ('rotate=-90', (533, 800)),
    ('rotate=180', (800, 533)),
    ('rotate=270', (533, 800)),
    ('rotate=360', (800, 533)),
    ('w=400&rotate=90', (267, 400)),
    ('flip=h', (800, 533)),
    ('flip=v', (800, 533)),
    ('blur=3', (800, 533)),
    ('sharpen=2', (800, 533)),
    ('w=200&h=200&fit=cover&gravity=entropy', (200, 200)),
    ('w=200&h=200&fit=cover&gravity=attention', (200, 200)),
    ('w=200&h=100&fit=cover&gravity=southeast', (200, 100)),
]


def _geometry_test(query, want):
    def fn():
        o = variant(CAR_PNG, query)
        assert o.fmt == 'png', 'default format is the source format: %r' % o
        assert o.info['bands'] == 3, o
        if query == 'w=1000&h=1000&fit=outside&enlarge=1':
            # 800x533 scaled by 1000/533: the width is 1500 or 1501 by rounding
            assert o.size in ((1500, 1000), (1501, 1000)), '?%s gave %r' % (query, o)
        else:
            assert o.size == want, '?%s: got %dx%d, expected %dx%d' % (query, o.size[0],
                                                                       o.size[1], *want)
    return fn


for _q, _want in GEOMETRY:
    add_test('geometry %s -> %dx%d' % (_q, _want[0], _want[1]), _geometry_test(_q, _want))


@test
def rotate_45_makes_an_enlarged_canvas_filled_with_bg():
    o = variant(CAR_PNG, 'rotate=45')
    # 800 cos45 + 533 sin45 = 942.6
    for d in o.size:
        assert 940 <= d <= 946, 'rotate=45 of 800x533 gave %r' % o
    assert close(getpoint(o.path, 0, 0), [0, 0, 0], 1), 'corner is not black (default bg)'
    o = variant(CAR_PNG, 'rotate=45&bg=00ff00')
    assert close(getpoint(o.path, 1, 1), [0, 255, 0], 1), \
        'corner is not the bg colour: %r' % getpoint(o.path, 1, 1)
    o = variant(CAR_PNG, 'rotate=-30&w=200')
    # 200x133 turned 30 degrees: 200 cos30 + 133 sin30 = 239.7, 200 sin30 + 133 cos30 = 215.2
    assert 238 <= o.size[0] <= 243 and 213 <= o.size[1] <= 219, 'w=200&rotate=-30: %r' % o


@test
def blur_and_sharpen_change_pixels_not_size():
    orig = variant(CAR_PNG, 'format=png')
    blur = variant(CAR_PNG, 'blur=3')
    sharp = variant(CAR_PNG, 'sharpen=2')
    db, ds = mad(orig.path, blur.path), mad(orig.path, sharp.path)
    harness._diag('mean abs diff: blur=3 %.2f, sharpen=2 %.2f' % (db, ds))
    assert db > 1.0, 'blur=3 barely changed the pixels (%.3f)' % db
    assert ds > 0.2, 'sharpen=2 barely changed the pixels (%.3f)' % ds
    assert mad(orig.path, variant(CAR_PNG, 'blur=20').path) > db, 'blur=20 is not blurrier'


# ---------------------------------------------------------------------------
# pixel-exact checks on a generated 64x48 PNG
# ---------------------------------------------------------------------------

def src_pixel(x, y):
    return getpoint(_gen_path(), x, y)


_gen = []


def _gen_path():
    if not _gen:
        _gen.append(save(gen_png(), '.png'))
    return _gen[0]


def check_mapping(query, size, mapping, points=None):
    """The variant of the generated PNG has `size` and out(x, y) ==
    in(*mapping(x, y)) at several points."""
    o = variant(gen_png(), query)
    assert o.fmt == 'png' and o.size == size, '?%s: %r, expected %dx%d png' % (query, o, *size)
    w, h = size
    pts = points or [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 3, h // 4),
                     (w // 2, h // 2)]
    for x, y in pts:
        got = getpoint(o.path, x, y)
        sx, sy = mapping(x, y)
        want = src_pixel(sx, sy)
        assert got == want, '?%s: output (%d,%d) = %r, expected input (%d,%d) = %r' % (
            query, x, y, got, sx, sy, want)
    return o


W, H = GEN_W, GEN_H


@test
def rotate_90_is_exact_clockwise():
    # the output's top-left is the input's bottom-left
    check_mapping('rotate=90', (H, W), lambda x, y: (y, H - 1 - x))


@test
def rotate_180_is_exact():
    check_mapping('rotate=180', (W, H), lambda x, y: (W - 1 - x, H - 1 - y))


@test
def rotate_270_and_minus_90_are_exact_and_equal():
    a = check_mapping('rotate=270', (H, W), lambda x, y: (W - 1 - y, x))
    b = check_mapping('rotate=-90', (H, W), lambda x, y: (W - 1 - y, x))
    assert a.body == b.body, 'rotate=270 and rotate=-90 give different bytes'


@test
def flip_h_and_flip_v_are_exact():
    check_mapping('flip=h', (W, H), lambda x, y: (W - 1 - x, y))
    check_mapping('flip=v', (W, H), lambda x, y: (x, H - 1 - y))


@test
def crop_is_exact():
    check_mapping('crop=5,7,20,10', (20, 10), lambda x, y: (x + 5, y + 7))


@test
def order_is_fixed_whatever_the_url_order():
    # rotate 90 then flip h is a transpose: out(x, y) = in(y, x); flip then
    # rotate would give in(W-1-y, H-1-x).
    a = check_mapping('rotate=90&flip=h', (H, W), lambda x, y: (y, x))
    b = check_mapping('flip=h&rotate=90', (H, W), lambda x, y: (y, x))
    assert a.body == b.body, 'same plan, different bytes'
    assert a.headers.get('etag') == b.headers.get('etag'), 'same plan, different ETag'
    # crop before rotate: crop=0,0,10,20 of the source, then rotated
    check_mapping('rotate=90&crop=0,0,10,20', (20, 10), lambda x, y: (y, 19 - x))


@test
def cover_gravity_north_keeps_the_top_and_south_the_bottom():
    # scale 1 (cover of 64x16 on 64x48): a pure crop of 16 rows
    check_mapping('w=64&h=16&fit=cover&gravity=north', (64, 16), lambda x, y: (x, y))
    check_mapping('w=64&h=16&fit=cover&gravity=south', (64, 16), lambda x, y: (x, y + 32))
    check_mapping('w=64&h=16&fit=cover', (64, 16), lambda x, y: (x, y + 16))
    check_mapping('w=16&h=48&fit=cover&gravity=west', (16, 48), lambda x, y: (x, y))
    check_mapping('w=16&h=48&fit=cover&gravity=east', (16, 48), lambda x, y: (x + 48, y))


@test
def cover_gravity_on_a_photo_crops_the_right_part():
    # 800x533 -> w=400&h=100 cover: scaled to 400x267, then 100 rows kept
    n = variant(CAR_PNG, 'w=400&h=100&fit=cover&gravity=north')
    s = variant(CAR_PNG, 'w=400&h=100&fit=cover&gravity=south')
    top = variant(CAR_PNG, 'w=400&crop=0,0,800,200')   # the top 200 rows, scaled by 1/2
    bot = variant(CAR_PNG, 'w=400&crop=0,333,800,200')
    for o in (n, s, top, bot):
        assert o.size == (400, 100), o
    dn, ds = mad(n.path, top.path), mad(s.path, bot.path)
    cross = mad(n.path, bot.path)
    harness._diag('north vs top %.2f, south vs bottom %.2f, north vs bottom %.2f' % (
        dn, ds, cross))
    assert dn < 6 and ds < 6, 'gravity crop does not match the expected rows'
    assert cross > 3 * max(dn, ds, 1), 'north and south crops are too alike to tell'


@test
def contain_pads_with_black_or_bg():
    # 64x48 in a 64x64 box: 8 rows of padding above and below
    o = check_mapping('w=64&h=64&fit=contain', (64, 64), lambda x, y: (x, y - 8),
                      points=[(0, 8), (63, 55), (32, 30)])
    assert o.info['bands'] == 3, o
    for x, y in ((0, 0), (63, 7), (10, 60), (63, 63)):
        assert getpoint(o.path, x, y) == [0, 0, 0], 'padding at (%d,%d) is %r' % (
            x, y, getpoint(o.path, x, y))
    o = variant(gen_png(), 'w=64&h=64&fit=contain&bg=ff0000')
    assert getpoint(o.path, 5, 2) == [255, 0, 0], 'bg=ff0000 padding is %r' % getpoint(
        o.path, 5, 2)
    o = variant(CAR_PNG, 'w=400&h=400&fit=contain&bg=0000ff')
    assert o.size == (400, 400), o
    assert close(getpoint(o.path, 200, 3), [0, 0, 255], 1), getpoint(o.path, 200, 3)


@test
def contain_on_alpha_pads_transparent():
    o = variant(RGBA_PNG, 'w=400&h=400&fit=contain')
    assert o.fmt == 'png' and o.size == (400, 400) and o.info['bands'] == 4, o
    assert getpoint(o.path, 200, 3)[3] == 0, 'padding is not transparent: %r' % getpoint(
        o.path, 200, 3)
    assert getpoint(o.path, 200, 200)[3] == 255, 'the car is not opaque'


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

BAD_QUERIES = [
    ('w=100001', 'w'), ('w=0', 'w'), ('h=100001', 'h'), ('w=-5', 'w'), ('w=abc', 'w'),
    ('w=10&fit=bogus', 'fit'), ('unknown=1', 'unknown'), ('w=1&w=2', 'w'),
    ('rotate=361', 'rotate'), ('blur=0.1', 'blur'), ('sharpen=11', 'sharpen'),
    ('flip=x', 'flip'), ('format=bmp', 'format'), ('q=0', 'q'), ('q=101', 'q'),
    ('crop=1,2,3', 'crop'), ('w=10&gravity=up', 'gravity'), ('rotate=90&bg=red', 'bg'),
    ('strip=2', 'strip'), ('enlarge=yes&w=10', 'enlarge'),
    ('crop=700,0,200,10', 'crop'),     # outside the 800x533 image
    ('crop=0,500,10,100', 'crop'),
]


def _bad_query_test(query, param):
    def fn():
        img = uploaded(CAR_PNG)
        st, h, b = vget(img['id'], query)
        p = check_problem(st, h, b, 400, 'invalid-operation')
        assert re.search(r'\b%s\b' % re.escape(param), p['detail']), \
            'detail %r does not name %r' % (p['detail'], param)
    return fn


for _q, _p in BAD_QUERIES:
    add_test('400 for ?%s names %s' % (_q, _p), _bad_query_test(_q, _p))


@test
def absurd_output_is_422_before_allocating():
    s = srv()
    img = uploaded(CAR_PNG)
    before = s.status()
    t0 = time.monotonic()
    st, h, b = vget(img['id'], 'w=100000&h=100000&fit=fill&enlarge=1')
    took = time.monotonic() - t0
    after = s.status()
    check_problem(st, h, b, 422, 'image-too-large')
    grew = after['VmHWM'] - before['VmHWM']
    harness._diag('422 in %.2f s, peak RSS grew %.1f MiB' % (took, grew / MiB))
    assert grew < 64 * MiB, 'peak RSS grew %.0f MiB' % (grew / MiB)
    assert took < 5, 'refusing took %.1f s' % took
    # also one side: w=100000&enlarge=1 of 800x533 is 100000x66625
    st, h, b = vget(img['id'], 'w=100000&enlarge=1')
    check_problem(st, h, b, 422, 'image-too-large')
    st, h, b = vget(img['id'], 'rotate=45&w=9000&enlarge=1')
    check_problem(st, h, b, 422, 'image-too-large')
    assert s.alive()


@test
def unknown_id_is_404():
    for q in ('w=100', '', 'w=0'):
        st, h, b = vget('AAAAAAAAAAAAAAAAAAAAAA', q)
        if q == 'w=0' and st == 400:
            continue   # a bad query may be refused first
        check_problem(st, h, b, 404, 'not-found')


# ---------------------------------------------------------------------------
# caching headers
# ---------------------------------------------------------------------------

@test
def variant_has_quoted_etag_and_immutable_cache_control():
    img = uploaded(ROCKET)
    st, h, b = vget(img['id'], 'w=200&rotate=90&q=70')
    o = Out(st, h, b, 'variant')
    assert o.size == (133, 200), o
    et = h.get('etag', '')
    assert re.match(r'^"[^"]+"$', et), 'ETag %r is not quoted' % et
    assert h.get('cache-control') == 'public, max-age=31536000, immutable', h
    st2, h2, b2 = s_get = vget(img['id'], 'q=70&rotate=90&w=200')
    assert st2 == 200 and h2.get('etag') == et, 'reordered query, other ETag\n' + describe(*s_get)
    assert b2 == b, 'reordered query, other bytes'
    st3, h3, b3 = vget(img['id'], 'w=201&rotate=90&q=70')
    assert st3 == 200 and h3.get('etag') != et, 'different plans share an ETag'
    st4, h4, _ = vget(img['id'], '')
    assert h4.get('etag') != et, 'the variant has the ETag of the original'
    # 304
    st, h5, b5 = vget(img['id'], 'w=200&rotate=90&q=70', headers={'If-None-Match': et})
    assert st == 304 and b5 == b'', describe(st, h5, b5)
    assert h5.get('etag') == et, '304 without the ETag'
    st, h6, b6 = vget(img['id'], 'w=200&rotate=90&q=70',
                      headers={'If-None-Match': '"nope", ' + et})
    assert st == 304, 'If-None-Match with a list\n' + describe(st, h6, b6)
    st, h7, b7 = vget(img['id'], 'w=200&rotate=90&q=70', headers={'If-None-Match': '"nope"'})
    assert st == 200 and b7 == b, describe(st, h7, b7)


@test
def empty_query_or_only_sig_serves_the_original():
    data = harness.read_bytes(ROCKET)
    img = uploaded(ROCKET)
    for q in ('', 'sig=abc'):
        st, h, b = vget(img['id'], q)
        assert st == 200 and b == data, '?%s\n%s' % (q, describe(st, h, b))
    # q=80 alone is a re-encode, not the original
    o = variant(ROCKET, 'q=80')
    assert o.fmt == 'jpeg' and o.size == (640, 427), o


# ---------------------------------------------------------------------------
# output formats
# ---------------------------------------------------------------------------

DEFAULT_FORMATS = [
    (CAR_PNG, 'png'), (PROG_JPG, 'jpeg'), (LOSSY_WEBP, 'webp'), (TIFF, 'tiff'),
    (GIF8, 'gif'), (AVIF, 'avif'), (HEIC, 'jpeg'),   # HEIC gives JPEG
]


def _default_format_test(path, want):
    def fn():
        o = variant(path, 'w=120')
        assert o.fmt == want, '%s w=120: %r, expected %s' % (harness.label(path), o, want)
        frame = (120, 80)
        assert o.size == frame, o
    return fn


for _p, _f in DEFAULT_FORMATS:
    add_test('default output format of %s is %s' % (os.path.basename(_p), _f),
             _default_format_test(_p, _f))


@test
def explicit_formats_decode():
    for fmt in ('jpeg', 'png', 'webp', 'avif', 'gif', 'tiff'):
        o = variant(ROCKET, 'w=160&format=%s' % fmt)
        assert o.fmt == fmt and o.size == (160, 107), 'format=%s gave %r' % (fmt, o)
        assert 'vary' not in o.headers or 'accept' not in o.headers['vary'].lower(), \
            'format=%s sets Vary: Accept' % fmt


AUTO = [
    ('image/avif,image/webp,*/*', 'avif'),
    ('image/webp,image/avif;q=0.5', 'avif'),
    ('image/webp,*/*;q=0.8', 'webp'),
    ('image/avif;q=0,image/webp', 'webp'),
    ('image/avif;q=0, image/webp;q=0', 'jpeg'),
    ('*/*', 'jpeg'),
    ('image/*', 'jpeg'),
    ('text/html', 'jpeg'),
    (None, 'jpeg'),
]


@test
def format_auto_follows_accept_and_varies():
    etags = {}
    for accept, want in AUTO:
        o = variant(ROCKET, 'w=100&format=auto', headers={'Accept': accept} if accept else None)
        assert o.fmt == want, 'Accept %r gave %s, expected %s' % (accept, o.fmt, want)
        assert 'accept' in o.headers.get('vary', '').lower(), \
            'format=auto without Vary: Accept (Accept %r)' % accept
        etags.setdefault(want, set()).add(o.headers.get('etag'))
    for fmt, tags in etags.items():
        assert len(tags) == 1, 'auto -> %s gave several ETags %r' % (fmt, tags)
    allt = [next(iter(t)) for t in etags.values()]
    assert len(set(allt)) == len(allt), 'auto results of different formats share an ETag'
    # PNG source: auto without avif/webp stays png
    o = variant(CAR_PNG, 'w=100&format=auto', headers={'Accept': '*/*'})
    assert o.fmt == 'png', o
    o = variant(RGBA_PNG, 'w=100&format=auto', headers={'Accept': 'image/webp'})
    assert o.fmt == 'webp' and o.info['bands'] == 4, o


@test
def jpeg_of_alpha_source_is_flattened_on_white():
    o = variant(RGBA_PNG, 'format=jpeg')
    assert o.fmt == 'jpeg' and o.info['bands'] == 3 and o.size == (800, 533), o
    for x, y in ((2, 2), (797, 530), (20, 20)):
        p = getpoint(o.path, x, y)
        assert all(v >= 235 for v in p), 'transparent pixel (%d,%d) became %r, not white' % (
            x, y, p)
    p = getpoint(o.path, 400, 266)
    assert not all(v >= 235 for v in p), 'the opaque centre became white too'


@test
def strip_removes_exif():
    o = variant(NIKON, 'w=300')
    assert o.fmt == 'jpeg' and o.size == (300, 225), o
    assert 'exif-data' in o.info['fields'], 'EXIF lost without strip=1'
    o = variant(NIKON, 'w=300&strip=1')
    assert o.size == (300, 225), o
    left = [k for k in o.info['fields'] if k.startswith('exif-') or k == 'xmp-data']
    assert not left, 'strip=1 left %s' % left
    kept = []
    for fmt in ('png', 'webp', 'avif', 'tiff'):
        o = variant(NIKON, 'w=300&format=%s' % fmt)
        harness._diag('%s without strip: exif-data %s' % (
            fmt, 'kept' if 'exif-data' in o.info['fields'] else 'absent'))
        o = variant(NIKON, 'w=300&strip=1&format=%s' % fmt)
        assert o.fmt == fmt and o.size == (300, 225), o
        left = [k for k in o.info['fields'] if k.startswith('exif-') or k == 'xmp-data']
        if left:
            kept.append('%s (%d EXIF fields)' % (fmt, len(left)))
    assert not kept, 'strip=1 leaves EXIF in: %s' % ', '.join(kept)


@test
def q10_is_smaller_than_q90():
    for fmt in ('jpeg', 'webp', 'avif'):
        lo = variant(CAR_PNG, 'w=400&format=%s&q=10' % fmt)
        hi = variant(CAR_PNG, 'w=400&format=%s&q=90' % fmt)
        assert lo.size == hi.size == (400, 267), (lo, hi)
        harness._diag('%s: q=10 %d bytes, q=90 %d bytes' % (fmt, len(lo.body), len(hi.body)))
        assert len(lo.body) < len(hi.body) * 0.7, '%s q=10 %d bytes vs q=90 %d' % (
            fmt, len(lo.body), len(hi.body))


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------

def to_srgb_pixels(path):
    """The image converted to sRGB pixels through its own ICC profile (as a
    colour-managed viewer shows it); the file itself when it has none."""
    if not harness.probe(path)['has_icc']:
        return path
    _n[0] += 1
    out = os.path.join(tmpdir(), 'srgb%d.png' % _n[0])
    vips('icc_transform', path, out, 'srgb', '--embedded', '--intent', 'relative')
    return out


def reference(path, width):
    """libvips' own thumbnail of path exported to sRGB."""
    _n[0] += 1
    out = os.path.join(tmpdir(), 'ref%d.png' % _n[0])
    vips('thumbnail', path, out, width, '--export-profile', 'srgb')
    return out


@test
def cmyk_jpeg_gives_srgb_that_looks_right():
    o = variant(CMYK_JPG, 'w=400&format=png')
    assert o.size == (400, 267) and o.info['bands'] == 3, o
    assert o.info['fields'].get('interpretation') == 'srgb', o.info['fields'].get(
        'interpretation')
    d = mad(to_srgb_pixels(o.path), reference(CMYK_JPG, 400))
    harness._diag('CMYK vs libvips thumbnail to sRGB: %.2f' % d)
    assert d < 3, 'CMYK colours differ from libvips\' conversion by %.2f' % d
    o = variant(CMYK_JPG, 'w=400')
    assert o.fmt == 'jpeg' and o.info['bands'] == 3, 'CMYK source to jpeg: %r' % o


def _p3_test(query):
    def fn():
        o = variant(P3_JPG, query)
        assert o.size == (400, 267) and o.info['bands'] == 3, o
        ref = reference(P3_JPG, 400)
        raw = mad(o.path, ref)
        managed = mad(to_srgb_pixels(o.path), ref)
        harness._diag('?%s: ICC profile %s; vs libvips thumbnail to sRGB: pixels as they are '
                      '%.2f, through the embedded profile %.2f' % (
                          query, 'kept' if o.info['has_icc'] else 'none', raw, managed))
        # The output is sRGB (DESIGN/issue: "Output in sRGB"): its pixels, read
        # as sRGB, match the conversion; P3 pixels read as sRGB are ~5 off.
        assert raw < 2.5, ('the pixels are not sRGB: %.2f (mean abs) from the sRGB conversion'
                           '%s' % (raw, ' (a Display P3 profile is attached, so only colour-'
                                   'managed viewers show it right)' if o.info['has_icc']
                                   else ' and no profile says otherwise: colours are wrong'))
    return fn


add_test('display P3 jpeg w=400 gives sRGB pixels', _p3_test('w=400&format=png'))
add_test('display P3 jpeg w=400 strip=1 gives sRGB pixels',
         _p3_test('w=400&format=png&strip=1'))
add_test('display P3 jpeg crop+resize gives sRGB pixels',
         _p3_test('crop=0,0,800,533&w=400&format=png'))
add_test('display P3 jpeg w=400 to jpeg gives sRGB pixels', _p3_test('w=400&q=95'))


@test
def sixteen_bit_png_gives_8_bit():
    o = variant(RGB16_PNG, 'w=400')
    assert o.fmt == 'png' and o.size == (400, 267) and o.info['bands'] == 3, o
    assert o.info['fields'].get('format') == 'uchar', 'format %s' % o.info['fields'].get(
        'format')
    ref = variant(CAR_PNG, 'w=400')
    d = mad(o.path, ref.path)
    assert d < 3, '16-bit result differs from the 8-bit one by %.2f' % d
    o = variant(RGB16_PNG, 'rotate=90')
    assert o.size == (533, 800) and o.info['fields'].get('format') == 'uchar', o


@test
def grayscale_jpeg_stays_one_band():
    o = variant(GRAY_JPG, 'w=400')
    assert o.fmt == 'jpeg' and o.size == (400, 267) and o.info['bands'] == 1, o
    o = variant(GRAY_JPG, 'w=400&format=png&rotate=90')
    assert o.size == (267, 400) and o.info['bands'] == 1, o


@test
def alpha_is_kept_in_png_and_webp():
    o = variant(RGBA_PNG, 'w=400')
    assert o.fmt == 'png' and o.info['bands'] == 4 and o.size == (400, 267), o
    assert getpoint(o.path, 1, 1)[3] == 0 and getpoint(o.path, 200, 133)[3] == 255
    o = variant(RGBA_PNG, 'w=400&format=webp')
    assert o.fmt == 'webp' and o.info['bands'] == 4, o
    assert getpoint(o.path, 1, 1)[3] < 10, 'webp lost the transparency'
    o = variant(LOSSLESS_WEBP, 'w=400&rotate=90')
    assert o.fmt == 'webp' and o.info['bands'] == 4 and o.size == (267, 400), o
    o = variant(RGBA_PNG, 'w=400&format=avif')
    assert o.fmt == 'avif' and o.info['bands'] == 4, o


@test
def animated_gif_keeps_its_frames():
    for fmt in ('gif', 'webp'):
        o = variant(GIF8, 'w=120&format=%s' % fmt)
        assert o.fmt == fmt and o.info['pages'] == 8, 'gif -> %s: %r' % (fmt, o)
        assert o.size == (120, 80), 'frame size %r' % (o.size,)
        full = harness.vips_field(o.path + '[n=-1]', 'height')
        assert full == str(80 * 8), 'all frames: height %s' % full
    o = variant(GIF8, 'w=120&format=png')
    assert o.fmt == 'png' and o.info['pages'] == 1 and o.size == (120, 80), o
    # default format keeps gif, and rotate keeps every frame
    o = variant(GIF8, 'rotate=90')
    assert o.fmt == 'gif' and o.info['pages'] == 8 and o.size == (160, 240), o


@test
def animated_webp_keeps_its_frames():
    o = variant(WEBP8, 'w=120')
    assert o.fmt == 'webp' and o.info['pages'] == 8 and o.size == (120, 80), o
    o = variant(WEBP8, 'w=120&format=gif')
    assert o.fmt == 'gif' and o.info['pages'] == 8 and o.size == (120, 80), o
    o = variant(WEBP8, 'crop=0,0,100,50&flip=h')
    assert o.info['pages'] == 8 and o.size == (100, 50), o


@test
def heic_and_avif_sources_work():
    o = variant(HEIC, 'w=400&h=400&fit=cover')
    assert o.fmt == 'jpeg' and o.size == (400, 400) and o.info['bands'] == 3, o
    o = variant(HEIC, 'w=300&format=png')
    d = mad(o.path, variant(CAR_PNG, 'w=300').path)
    assert d < 6, 'HEIC result differs from the PNG one by %.2f' % d
    o = variant(AVIF, 'w=300&rotate=180')
    assert o.fmt == 'avif' and o.size == (300, 200), o


# ---------------------------------------------------------------------------
# orientation
# ---------------------------------------------------------------------------

_orient_ref = {}
ORIENT_LIMIT = 15.0


def orient_ref(kind):
    if kind not in _orient_ref:
        q = 'w=300&format=png' if kind == 'landscape' else 'h=300&format=png'
        one = variant(corpus('orientation/%s_1.jpg' % kind), q)
        r180 = variant(corpus('orientation/%s_1.jpg' % kind), q + '&rotate=180')
        mirror = variant(corpus('orientation/%s_1.jpg' % kind), q + '&flip=h')
        sanity = min(mad(one.path, r180.path), mad(one.path, mirror.path))
        harness._diag('%s_1 vs itself turned 180 or mirrored: %.1f' % (kind, sanity))
        assert sanity > 2 * ORIENT_LIMIT, 'the orientation check cannot tell (%.1f)' % sanity
        _orient_ref[kind] = one
    return _orient_ref[kind]


def _orient_test(kind, n):
    def fn():
        q = 'w=300&format=png' if kind == 'landscape' else 'h=300&format=png'
        o = variant(corpus('orientation/%s_%d.jpg' % (kind, n)), q)
        want = (300, 200) if kind == 'landscape' else (200, 300)
        assert o.size == want, '%s_%d: %r, expected %dx%d' % (kind, n, o, *want)
        d = mad(o.path, orient_ref(kind).path)
        harness._diag('%s_%d vs %s_1: %.2f' % (kind, n, kind, d))
        assert d < ORIENT_LIMIT, '%s_%d is not upright (mean abs diff %.1f)' % (kind, n, d)
    return fn


for _kind in ('landscape', 'portrait'):
    for _n_ in range(0, 9):
        add_test('orientation %s_%d comes out upright' % (_kind, _n_), _orient_test(_kind, _n_))


@test
def orientation_is_applied_before_crop_and_rotate():
    # landscape_6 is stored 1200x1800 turned; crop/rotate act on the upright image
    a = variant(corpus('orientation/landscape_6.jpg'), 'crop=0,0,900,600&w=300&format=png')
    b = variant(corpus('orientation/landscape_1.jpg'), 'crop=0,0,900,600&w=300&format=png')
    assert a.size == b.size == (300, 200), (a, b)
    d = mad(a.path, b.path)
    assert d < ORIENT_LIMIT, 'crop of landscape_6 differs from landscape_1 (%.1f)' % d


# ---------------------------------------------------------------------------
# the variant cache
# ---------------------------------------------------------------------------

@test
def same_variant_twice_is_a_cache_hit_with_the_same_etag():
    s = srv()
    img = s.upload_ok(harness.make_png(120, 80, seed=101))
    c0 = cache_counts(s)
    st, h1, b1 = vget(img['id'], 'w=60&rotate=90')
    c1 = cache_counts(s)
    st2, h2, b2 = vget(img['id'], 'rotate=90&w=60')
    c2 = cache_counts(s)
    assert st == st2 == 200, describe(st2, h2, b2)
    assert h1.get('etag') == h2.get('etag') and b1 == b2, 'second answer differs'
    assert c1['miss'] - c0['miss'] == 1, 'first request: %r -> %r' % (c0, c1)
    assert c2['hit'] - c1['hit'] == 1 and c2['miss'] == c1['miss'], \
        'second request is not a hit: %r -> %r' % (c1, c2)
    o = Out(st2, h2, b2, 'cached')
    assert o.size == (40, 60), o


@test
def variant_cache_off_computes_every_time():
    s = Server(extra_args=['--variant-cache', 'off'])
    try:
        img = s.upload_ok(ROCKET)
        blobs_before = harness.blob_files(s.blobs_dir)
        c0 = cache_counts(s)
        etags = set()
        for _ in range(2):
            st, h, b = vget(img['id'], 'w=100', s=s)
            o = Out(st, h, b, 'cache off')
            assert o.size == (100, 67), o
            etags.add(h.get('etag'))
        c1 = cache_counts(s)
        assert c1['off'] - c0['off'] == 2, 'result="off" %r -> %r' % (c0, c1)
        assert c1['hit'] == c0['hit'] and c1['miss'] == c0['miss'], (c0, c1)
        assert len(etags) == 1, 'cache off: ETags differ %r' % etags
        assert harness.blob_files(s.blobs_dir) == blobs_before, 'cache off stored a blob'
    finally:
        s.stop()


@test
def concurrent_requests_for_a_missing_variant_compute_it_once():
    s = srv()
    img = uploaded(STORM)
    q = 'w=900&blur=2&format=png'
    c0 = cache_counts(s)
    barrier = threading.Barrier(8)
    results = [None] * 8

    def one(i):
        barrier.wait(10)
        results[i] = vget(img['id'], q)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    c1 = cache_counts(s)
    for r in results:
        assert r is not None and r[0] == 200, describe(*r) if r else 'no answer'
    assert len({r[1].get('etag') for r in results}) == 1, 'different ETags'
    assert len({sha256(r[2]) for r in results}) == 1, 'different bytes'
    o = Out(*results[0], ctx='single flight')
    assert o.size == (900, 600), o
    miss, hit = c1['miss'] - c0['miss'], c1['hit'] - c0['hit']
    harness._diag('8 concurrent: %d miss, %d hit' % (miss, hit))
    assert miss == 1, 'computed %d times (misses), expected 1 (hits %d)' % (miss, hit)
    assert hit + miss == 8, 'hits %d + misses %d != 8' % (hit, miss)


@test
def deleting_the_image_deletes_its_variants():
    s = Server(extra_args=['--sweep-interval', '100ms', '--blob-grace', '0s'])
    try:
        img = s.upload_ok(harness.make_png(100, 60, seed=202))
        orig = harness.blob_files(s.blobs_dir)
        assert len(orig) == 1, orig
        for q in ('w=50', 'rotate=90', 'w=20&format=webp'):
            st, h, b = vget(img['id'], q, s=s)
            Out(st, h, b, q)
        with_variants = harness.blob_files(s.blobs_dir)
        assert len(with_variants) == 4, 'expected the original + 3 variant blobs: %r' % (
            with_variants,)
        st, h, b = s.request('DELETE', '/v1/images/' + img['id'])
        assert st == 204, describe(st, h, b)
        for q in ('w=50', 'rotate=90', ''):
            st, h, b = vget(img['id'], q, s=s)
            check_problem(st, h, b, 404, 'not-found')
        left = harness.wait_until(lambda: harness.blob_files(s.blobs_dir) == [], 10)
        assert left, 'blobs left after delete: %r' % harness.blob_files(s.blobs_dir)
    finally:
        s.stop()


@test
def variant_cache_max_bytes_evicts_least_recently_used():
    s = Server(extra_args=['--variant-cache-max-bytes', '1', '--sweep-interval', '100ms',
                           '--blob-grace', '0s'])
    try:
        img = s.upload_ok(ROCKET)
        orig = harness.blob_files(s.blobs_dir)
        ev0 = metric(s, 'image_server_variants_evicted_total', '')
        for q in ('w=100', 'w=200', 'rotate=90'):
            st, h, b = vget(img['id'], q, s=s)
            Out(st, h, b, q)
        gone = harness.wait_until(lambda: harness.blob_files(s.blobs_dir) == orig, 15)
        assert gone, 'variant blobs not evicted: %r (original %r)' % (
            harness.blob_files(s.blobs_dir), orig)
        st, h, b = vget(img['id'], 'w=200', s=s)
        o = Out(st, h, b, 'after eviction')
        assert o.size == (200, 133), o
        st, h, b = vget(img['id'], '', s=s)
        assert st == 200 and b == harness.read_bytes(ROCKET), 'original lost'
        text = metrics(s)
        m = re.search(r'^image_server_variants_evicted_total(?:\{\})? (\S+)$', text, re.M)
        harness._diag('evicted metric: %s (before %s)' % (m.group(1) if m else None, ev0))
        assert m and float(m.group(1)) >= 3, 'image_server_variants_evicted_total not >= 3'
    finally:
        s.stop()


if __name__ == '__main__':
    harness.run()
