#!/usr/bin/env python3
"""End-to-end: the image resource (upload, download, info, list, delete),
health, metrics, errors, request ids and the access log."""

import datetime
import glob
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (Server, test, add_test, corpus, check_problem, describe, sha256,  # noqa: E402
                     ID_RE, TIME_RE, CONTENT_TYPES)

_srv = None


def srv():
    """The shared server (a new one if the previous one died)."""
    global _srv
    if _srv is None or not _srv.alive():
        _srv = Server()
    return _srv


ROCKET = corpus('photos/small-rocket-640x427.jpg')
IXUS = corpus('photos/small-canon-ixus-640x480.jpg')
ORIENT6 = corpus('photos/10mp-canon-1000d-orient6-3888x2592.jpg')
LEICA8 = corpus('photos/16mp-leica-t-orient8-4928x3264.jpg')
RGBA_PNG = corpus('formats/car-rgba-transparent-800x533.png')
RGB_PNG = corpus('formats/car-rgb-800x533.png')
GIF8 = corpus('formats/car-animated-8frames.gif')
WEBP8 = corpus('formats/car-animated-8frames.webp')
P3_JPG = corpus('formats/car-displayp3-icc-800x533.jpg')
CMYK_JPG = corpus('formats/car-cmyk-800x533.jpg')
LOSSLESS_WEBP = corpus('formats/car-lossless-rgba-800x533.webp')

_uploaded = {}  # corpus path -> image JSON (on the shared server)


def uploaded(path):
    """The image JSON of path on the shared server, uploading it once."""
    s = srv()
    key = (id(s), path)
    if key not in _uploaded:
        _uploaded[key] = s.upload_ok(path)
    return _uploaded[key]


def check_image_json(img, data, ctx=''):
    ctx = ctx + '\n' + json.dumps(img, indent=1)
    for k in ('id', 'format', 'width', 'height', 'bytes', 'sha256', 'created_at'):
        assert k in img, 'image JSON has no %r%s' % (k, ctx)
    assert isinstance(img['id'], str) and ID_RE.match(img['id']), \
        'id is not 22 base64url chars' + ctx
    assert img['format'] in CONTENT_TYPES, 'unknown format' + ctx
    assert isinstance(img['width'], int) and isinstance(img['height'], int), \
        'width/height not integers' + ctx
    assert img['bytes'] == len(data), 'bytes %r != %d%s' % (img['bytes'], len(data), ctx)
    assert img['sha256'] == sha256(data), 'sha256 mismatch (want %s)%s' % (sha256(data), ctx)
    assert isinstance(img['created_at'], str) and TIME_RE.match(img['created_at']), \
        'created_at is not RFC 3339 UTC with milliseconds' + ctx


def parse_time(s):
    return datetime.datetime.strptime(s, '%Y-%m-%dT%H:%M:%S.%fZ').replace(
        tzinfo=datetime.timezone.utc)


# ---------------------------------------------------------------------------
# upload
# ---------------------------------------------------------------------------

@test
def upload_raw_jpeg_answers_201_location_and_image_json():
    data = harness.read_bytes(ROCKET)
    st, h, b = srv().upload(data, 'image/jpeg')
    assert st == 201, describe(st, h, b)
    assert h.get('content-type', '').split(';')[0].strip() == 'application/json', \
        'Content-Type of the answer\n' + describe(st, h, b)
    img = json.loads(b)
    check_image_json(img, data)
    assert img['format'] == 'jpeg', img
    assert (img['width'], img['height']) == (640, 427), img
    assert h.get('location') == '/v1/images/' + img['id'], \
        'Location %r' % h.get('location')


@test
def created_at_is_now_in_utc():
    before = datetime.datetime.now(datetime.timezone.utc)
    img = srv().upload_ok(ROCKET)
    after = datetime.datetime.now(datetime.timezone.utc)
    t = parse_time(img['created_at'])
    slack = datetime.timedelta(seconds=5)
    assert before - slack <= t <= after + slack, \
        'created_at %s not between %s and %s' % (img['created_at'], before, after)


@test
def every_upload_gets_its_own_id():
    ids = {srv().upload_ok(ROCKET)['id'] for _ in range(3)}
    assert len(ids) == 3, ids


@test
def width_height_follow_exif_orientation():
    img = srv().upload_ok(ORIENT6)
    assert (img['width'], img['height']) == (2592, 3888), img
    img = srv().upload_ok(corpus('orientation/landscape_6.jpg'))
    assert (img['width'], img['height']) == (1800, 1200), img


@test
def format_is_sniffed_from_the_bytes_not_the_content_type():
    img = srv().upload_ok(RGB_PNG, content_type='image/jpeg')
    assert img['format'] == 'png', img


def _corpus_files():
    out = []
    for sub in ('photos', 'orientation', 'formats'):
        for p in sorted(glob.glob(os.path.join(harness.CORPUS, sub, '*'))):
            if os.path.isfile(p) and not p.endswith('.svg'):
                out.append(p)
    return out


def _corpus_test(path):
    def fn():
        data = harness.read_bytes(path)
        w, h, fmt = harness.expected_image(path)
        s = srv()
        st, hd, b = s.upload(data, harness.content_type_for_path(path))
        assert st == 201, describe(st, hd, b)
        img = json.loads(b)
        _uploaded[(id(s), path)] = img
        check_image_json(img, data)
        assert (img['width'], img['height'], img['format']) == (w, h, fmt), \
            'got %sx%s %s, expected %sx%s %s' % (img['width'], img['height'], img['format'],
                                                 w, h, fmt)
        st, hd, b = s.get('/v1/images/' + img['id'])
        assert st == 200, describe(st, hd, b)
        assert sha256(b) == sha256(data), \
            'downloaded %d bytes differ from the %d uploaded' % (len(b), len(data))
        assert hd.get('content-type', '').split(';')[0].strip() == CONTENT_TYPES[fmt], \
            'Content-Type %r for %s' % (hd.get('content-type'), fmt)
    return fn


for _p in _corpus_files():
    add_test('corpus %s uploads with the right size and format, downloads identical'
             % os.path.relpath(_p, harness.CORPUS), _corpus_test(_p))


@test
def content_type_not_image_is_415():
    data = harness.read_bytes(ROCKET)
    for ctype in ('text/plain', 'application/octet-stream', 'application/json'):
        st, h, b = srv().upload(data, ctype)
        check_problem(st, h, b, 415, 'unsupported-media-type')
    st, h, b = srv().upload(data, None)
    check_problem(st, h, b, 415, 'unsupported-media-type')


@test
def empty_body_is_415():
    st, h, b = srv().upload(b'', 'image/jpeg')
    check_problem(st, h, b, 415, 'unsupported-media-type')
    st, h, b = srv().request('POST', '/v1/images')
    check_problem(st, h, b, 415, 'unsupported-media-type')


@test
def multipart_field_file_uploads():
    data = harness.read_bytes(IXUS)
    st, h, b = srv().upload_multipart([
        ('title', b'a caption', None, None),
        ('file', data, 'ixus.jpg', 'image/jpeg'),
        ('other', b'more', None, 'text/plain'),
    ])
    assert st == 201, describe(st, h, b)
    img = json.loads(b)
    check_image_json(img, data)
    assert (img['format'], img['width'], img['height']) == ('jpeg', 640, 480), img
    assert h.get('location') == '/v1/images/' + img['id'], h.get('location')
    st, h, b = srv().get('/v1/images/' + img['id'])
    assert st == 200 and b == data, describe(st, h, b[:200])


@test
def multipart_without_file_field_is_400():
    st, h, b = srv().upload_multipart([('image', harness.read_bytes(ROCKET), 'x.jpg',
                                        'image/jpeg')])
    check_problem(st, h, b, 400, 'invalid-operation')


@test
def malformed_multipart_is_400():
    bodies = [
        b'this is not multipart at all',
        b'--e2eboundary\r\nContent-Disposition: form-data; name="file"\r\n\r\nno end',
        b'--other\r\nContent-Disposition: form-data; name="file"\r\n\r\nx\r\n--other--\r\n',
    ]
    for body in bodies:
        st, h, b = srv().request('POST', '/v1/images', body=body, headers={
            'Content-Type': 'multipart/form-data; boundary=e2eboundary'})
        check_problem(st, h, b, 400)


@test
def multipart_file_that_is_not_an_image_is_415():
    st, h, b = srv().upload_multipart([('file', b'<html><body>hi</body></html>', 'x.jpg',
                                        'image/jpeg')])
    check_problem(st, h, b, 415, 'unsupported-media-type')


# ---------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------

@test
def original_has_etag_and_immutable_cache_control():
    img = uploaded(ROCKET)
    st, h, b = srv().get('/v1/images/' + img['id'])
    assert st == 200, describe(st, h, b)
    assert b == harness.read_bytes(ROCKET), 'bytes differ'
    assert h.get('content-type', '').split(';')[0] == 'image/jpeg', h.get('content-type')
    etag = h.get('etag', '')
    assert re.match(r'^(W/)?"[^"]+"$', etag), 'ETag %r is not a quoted entity tag' % etag
    assert h.get('cache-control', '').replace(' ', '') == \
        'public,max-age=31536000,immutable', 'Cache-Control %r' % h.get('cache-control')
    assert h.get('content-length') == str(len(b)), h.get('content-length')


@test
def if_none_match_answers_304_with_empty_body():
    img = uploaded(ROCKET)
    path = '/v1/images/' + img['id']
    st, h, b = srv().get(path)
    etag = h.get('etag')
    assert etag, describe(st, h, b[:100])
    st, h, b = srv().get(path, headers={'If-None-Match': etag})
    assert st == 304, describe(st, h, b[:200])
    assert b == b'', '304 with a body of %d bytes' % len(b)
    st, h, b = srv().get(path, headers={'If-None-Match': '"not-the-etag", ' + etag})
    assert st == 304, 'a list containing the ETag\n' + describe(st, h, b[:200])


@test
def a_304_repeats_etag_and_cache_control():
    img = uploaded(ROCKET)
    path = '/v1/images/' + img['id']
    etag = srv().get(path)[1].get('etag')
    st, h, b = srv().get(path, headers={'If-None-Match': etag})
    assert st == 304, describe(st, h, b[:200])
    assert h.get('etag') == etag, 'RFC 9110 15.4.5: 304 carries the ETag; got %r' % h.get('etag')
    assert 'immutable' in h.get('cache-control', ''), h.get('cache-control')


@test
def other_etag_gets_the_full_image():
    img = uploaded(ROCKET)
    st, h, b = srv().get('/v1/images/' + img['id'], headers={'If-None-Match': '"nope"'})
    assert st == 200 and b == harness.read_bytes(ROCKET), describe(st, h, b[:100])


@test
def head_has_the_same_headers_and_no_body():
    img = uploaded(RGB_PNG)
    path = '/v1/images/' + img['id']
    st, gh, gb = srv().get(path)
    assert st == 200, describe(st, gh, gb[:100])
    st, h, b = srv().request('HEAD', path)
    assert st == 200, describe(st, h, b)
    assert b == b'', 'HEAD had a body'
    assert h.get('content-length') == str(img['bytes']), \
        'Content-Length %r, size %d' % (h.get('content-length'), img['bytes'])
    for k in ('content-type', 'etag', 'cache-control'):
        assert h.get(k) == gh.get(k), '%s: HEAD %r vs GET %r' % (k, h.get(k), gh.get(k))


@test
def head_of_an_unknown_image_is_404():
    st, h, b = srv().request('HEAD', '/v1/images/AAAAAAAAAAAAAAAAAAAAAA')
    assert st == 404 and b == b'', describe(st, h, b)


@test
def unknown_id_is_404():
    for bad in ('AAAAAAAAAAAAAAAAAAAAAA', 'zzzzzzzzzzzzzzzzzzzzzz', 'x', 'not-an-id-at-all-really',
                '%2e%2e', '..%2f..%2fetc%2fpasswd'):
        for suffix in ('', '/info'):
            st, h, b = srv().get('/v1/images/' + bad + suffix)
            check_problem(st, h, b, 404, 'not-found')


# ---------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------

def info(path):
    img = uploaded(path)
    st, h, b = srv().get('/v1/images/%s/info' % img['id'])
    assert st == 200, describe(st, h, b)
    assert h.get('content-type', '').split(';')[0].strip() == 'application/json', \
        h.get('content-type')
    return img, json.loads(b)


@test
def info_is_image_json_plus_metadata():
    img, inf = info(ROCKET)
    for k in ('id', 'format', 'width', 'height', 'bytes', 'sha256', 'created_at'):
        assert inf.get(k) == img[k], '%s: info %r vs upload %r' % (k, inf.get(k), img[k])
    for k in ('pages', 'has_alpha', 'orientation', 'icc'):
        assert k in inf, 'info has no %r: %s' % (k, inf)
    assert inf['pages'] == 1, inf
    assert inf['has_alpha'] is False, inf


@test
def info_has_alpha():
    for path, want in ((RGBA_PNG, True), (LOSSLESS_WEBP, True), (RGB_PNG, False),
                       (IXUS, False), (CMYK_JPG, False)):
        _, inf = info(path)
        assert inf['has_alpha'] is want, '%s: has_alpha %r, want %r' % (
            harness.label(path), inf['has_alpha'], want)


@test
def info_orientation():
    for path, want in ((ORIENT6, 6), (LEICA8, 8), (corpus('orientation/landscape_3.jpg'), 3),
                       (corpus('orientation/portrait_1.jpg'), 1)):
        img, inf = info(path)
        assert inf['orientation'] == want, '%s: orientation %r want %r' % (
            harness.label(path), inf['orientation'], want)
    img, inf = info(LEICA8)
    assert (inf['width'], inf['height']) == (3264, 4928), inf


@test
def info_animated_gif_and_webp_have_8_pages_of_240x160():
    for path in (GIF8, WEBP8):
        _, inf = info(path)
        assert (inf['pages'], inf['width'], inf['height']) == (8, 240, 160), \
            '%s: %s' % (harness.label(path), inf)


@test
def info_icc_is_the_profile_description():
    _, inf = info(P3_JPG)
    assert isinstance(inf['icc'], str) and 'P3' in inf['icc'], inf['icc']
    assert harness.probe(RGB_PNG)['has_icc']
    _, inf = info(RGB_PNG)
    assert isinstance(inf['icc'], str) and 'sRGB' in inf['icc'], inf['icc']
    _, inf = info(ROCKET)
    assert isinstance(inf['icc'], str) and 'Adobe RGB' in inf['icc'], inf['icc']


@test
def info_icc_is_null_without_a_profile():
    cands = [IXUS, corpus('photos/small-nikon-e950-800x600.jpg'),
             corpus('formats/car-gray-800x533.jpg'), GIF8]
    path = next((p for p in cands if not harness.probe(p)['has_icc']), None)
    assert path, 'no corpus file without an ICC profile found'
    _, inf = info(path)
    assert inf['icc'] is None, '%s: icc %r' % (harness.label(path), inf['icc'])


# ---------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------

_list_srv = None
_list_imgs = []  # oldest first


def list_srv():
    """A server holding exactly 7 images (uploaded oldest first)."""
    global _list_srv
    if _list_srv is None or not _list_srv.alive():
        _list_srv = Server()
        del _list_imgs[:]
        for i in range(7):
            _list_imgs.append(_list_srv.upload_ok(harness.make_png(seed=i, text='list %d' % i),
                                                  'image/png'))
    return _list_srv


def get_page(s, query):
    st, h, b = s.get('/v1/images' + query)
    assert st == 200, 'GET /v1/images%s\n%s' % (query, describe(st, h, b))
    page = json.loads(b)
    assert set(page) >= {'items', 'next_cursor'}, page
    assert isinstance(page['items'], list), page
    assert page['next_cursor'] is None or isinstance(page['next_cursor'], str), page
    return page


def page_all(s, limit, between=None, max_pages=100):
    items, cursor, pages = [], None, 0
    while True:
        q = '?limit=%d' % limit + ('&cursor=' + cursor if cursor else '')
        page = get_page(s, q)
        assert len(page['items']) <= limit, 'page larger than limit: %d' % len(page['items'])
        items.extend(page['items'])
        pages += 1
        cursor = page['next_cursor']
        if not cursor:
            return items, pages
        assert pages < max_pages, 'more than %d pages' % max_pages
        if between:
            between()


@test
def list_is_newest_first_with_default_limit():
    s = list_srv()
    page = get_page(s, '')
    want = [i['id'] for i in reversed(_list_imgs)]
    got = [i['id'] for i in page['items']]
    assert got == want, 'got %s\nwant %s' % (got, want)
    assert page['next_cursor'] is None, page['next_cursor']
    by_id = {i['id']: i for i in _list_imgs}
    keys = ('id', 'format', 'width', 'height', 'bytes', 'sha256', 'created_at')
    for item in page['items']:
        want_item = by_id[item['id']]
        for k in keys:
            assert item.get(k) == want_item[k], 'list item %s != upload answer %s' % (
                item, want_item)


@test
def list_paging_with_limit_3_gives_each_once_in_order():
    s = list_srv()
    items, pages = page_all(s, 3)
    got = [i['id'] for i in items]
    want = [i['id'] for i in reversed(_list_imgs)]
    assert got == want, 'got %s\nwant %s' % (got, want)
    assert pages in (3, 4), 'pages: %d' % pages
    page = get_page(s, '?limit=1')
    assert [i['id'] for i in page['items']] == want[:1] and page['next_cursor'], page
    page = get_page(s, '?limit=1000')
    assert [i['id'] for i in page['items']] == want, page


@test
def list_paging_with_inserts_between_pages():
    s = list_srv()
    before = [i['id'] for i in get_page(s, '?limit=1000')['items']]
    n = [0]

    def insert():
        for _ in range(2):
            n[0] += 1
            s.upload_ok(harness.make_png(seed=1000 + n[0], text='insert %d' % n[0]), 'image/png')

    items, _ = page_all(s, 3, between=insert)
    got = [i['id'] for i in items]
    assert len(got) == len(set(got)), 'an image came twice: %s' % got
    seen = [i for i in got if i in set(before)]
    assert seen == before, 'pre-existing images: got %s\nwant %s' % (seen, before)


@test
def list_limit_out_of_range_is_400():
    s = list_srv()
    for q in ('0', '1001', 'abc', '-1', '1.5', '10abc'):
        st, h, b = s.get('/v1/images?limit=' + q)
        check_problem(st, h, b, 400, 'invalid-operation')


@test
def list_garbage_cursor_is_400():
    s = list_srv()
    for c in ('garbage', 'AAAAAAAAAAAAAAAA', '!!!', 'x' * 300):
        st, h, b = s.get('/v1/images?limit=3&cursor=' + c)
        check_problem(st, h, b, 400, 'invalid-operation')


@test
def list_unknown_parameter_is_400():
    st, h, b = list_srv().get('/v1/images?limt=3')
    check_problem(st, h, b, 400, 'invalid-operation')


# ---------------------------------------------------------------------------
# delete
# ---------------------------------------------------------------------------

@test
def delete_answers_204_then_404():
    s = srv()
    img = s.upload_ok(harness.make_png(seed=77, text='delete me'), 'image/png')
    path = '/v1/images/' + img['id']
    st, h, b = s.request('DELETE', path)
    assert st == 204, describe(st, h, b)
    assert b == b'', '204 with a body'
    st, h, b = s.get(path)
    check_problem(st, h, b, 404, 'not-found')
    st, h, b = s.get(path + '/info')
    check_problem(st, h, b, 404, 'not-found')
    st, h, b = s.request('DELETE', path)
    check_problem(st, h, b, 404, 'not-found')


@test
def deleted_image_leaves_the_list():
    s = list_srv()
    img = s.upload_ok(harness.make_png(seed=78, text='listed then deleted'), 'image/png')
    ids = [i['id'] for i in get_page(s, '?limit=1000')['items']]
    assert img['id'] in ids
    st, h, b = s.request('DELETE', '/v1/images/' + img['id'])
    assert st == 204, describe(st, h, b)
    ids = [i['id'] for i in get_page(s, '?limit=1000')['items']]
    assert img['id'] not in ids, 'deleted image still listed'


@test
def delete_keeps_other_images_with_equal_bytes():
    s = srv()
    data = harness.make_png(seed=79, text='twins')
    a = s.upload_ok(data, 'image/png')
    b_ = s.upload_ok(data, 'image/png')
    assert a['id'] != b_['id']
    st, h, b = s.request('DELETE', '/v1/images/' + a['id'])
    assert st == 204, describe(st, h, b)
    st, h, b = s.get('/v1/images/' + b_['id'])
    assert st == 200 and b == data, describe(st, h, b[:100])


# ---------------------------------------------------------------------------
# health, metrics
# ---------------------------------------------------------------------------

@test
def healthz_and_readyz_are_200():
    for p in ('/healthz', '/readyz'):
        st, h, b = srv().get(p)
        assert st == 200, '%s\n%s' % (p, describe(st, h, b))


METRIC_RE = re.compile(r'^http_requests_total\{([^}]*)\}\s+(\S+)')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics():
    st, h, b = srv().get('/metrics')
    assert st == 200, describe(st, h, b)
    ctype = h.get('content-type', '').replace(' ', '').lower()
    assert ctype.startswith('text/plain;version=0.0.4'), 'Content-Type %r' % h.get('content-type')
    series = {}
    for line in b.decode('utf-8', 'replace').split('\n'):
        m = METRIC_RE.match(line)
        if m:
            labels = tuple(sorted(LABEL_RE.findall(m.group(1))))
            series[labels] = float(m.group(2))
    return series, b.decode('utf-8', 'replace')


@test
def metrics_count_requests_by_route_and_status():
    srv().get('/healthz')
    series, text = metrics()
    assert series, 'no http_requests_total{...} lines:\n' + text[:2000]
    for labels in series:
        names = dict(labels)
        assert 'route' in names and 'status' in names, 'labels %s' % (labels,)
    for _ in range(5):
        srv().get('/healthz')
    last = {}

    def grown():
        # counters may be bumped when a response completes: poll briefly
        after, _ = metrics()
        last['after'] = after
        return [k for k, v in after.items()
                if v >= series.get(k, 0) + 5 and dict(k)['status'] == '200']

    grew = harness.wait_until(grown, 3.0, interval=0.2)
    after = last['after']
    assert sum(after.values()) >= sum(series.values()) + 5, \
        'total did not grow by 5: %s -> %s' % (sum(series.values()), sum(after.values()))
    assert grew, 'no status="200" series grew by 5:\nbefore %s\nafter %s' % (series, after)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

@test
def unknown_route_is_404_problem():
    for p in ('/', '/nope', '/v1', '/v1/images/AAAAAAAAAAAAAAAAAAAAAA/nope', '/v2/images',
              '/healthz/x'):
        st, h, b = srv().get(p)
        check_problem(st, h, b, 404, 'not-found')


@test
def wrong_method_is_405_with_allow():
    img = uploaded(ROCKET)
    cases = [
        ('PUT', '/v1/images', {'GET', 'POST'}),
        ('DELETE', '/v1/images', {'GET', 'POST'}),
        ('PATCH', '/v1/images/' + img['id'], {'GET', 'DELETE'}),
        ('POST', '/v1/images/' + img['id'] + '/info', {'GET'}),
        ('POST', '/healthz', {'GET'}),
        ('DELETE', '/readyz', {'GET'}),
        ('POST', '/metrics', {'GET'}),
    ]
    for method, path, allowed in cases:
        st, h, b = srv().request(method, path)
        check_problem(st, h, b, 405, 'method-not-allowed')
        allow = {m.strip().upper() for m in h.get('allow', '').split(',') if m.strip()}
        assert allowed <= allow, '%s %s: Allow %r should list %s' % (
            method, path, h.get('allow'), sorted(allowed))
        assert method not in allow, '%s %s: Allow %r lists %s' % (method, path, h.get('allow'),
                                                                  method)


# ---------------------------------------------------------------------------
# request ids and the access log
# ---------------------------------------------------------------------------

@test
def request_id_is_echoed_or_generated():
    rid = 'e2e-%016x' % random.getrandbits(64)
    for path in ('/healthz', '/nope'):
        st, h, b = srv().get(path, headers={'X-Request-Id': rid})
        assert h.get('x-request-id') == rid, '%s: X-Request-Id %r' % (path, h.get('x-request-id'))
    st1, h1, _ = srv().get('/healthz')
    st2, h2, _ = srv().get('/nope')
    g1, g2 = h1.get('x-request-id'), h2.get('x-request-id')
    assert g1 and g2 and g1 != g2, 'generated ids %r %r' % (g1, g2)
    st, h, b = srv().upload(b'not an image', 'image/jpeg', headers={'X-Request-Id': rid + 'u'})
    assert h.get('x-request-id') == rid + 'u', describe(st, h, b)


@test
def access_log_has_one_line_per_request():
    s = srv()
    img = uploaded(ROCKET)
    cases = []
    for method, path in (('GET', '/healthz'), ('GET', '/nope'),
                         ('GET', '/v1/images/%s/info' % img['id']),
                         ('DELETE', '/v1/images/AAAAAAAAAAAAAAAAAAAAAA')):
        rid = 'e2e-log-%016x' % random.getrandbits(64)
        st, h, b = s.request(method, path, headers={'X-Request-Id': rid})
        cases.append((rid, method, path, st))

    def lines_for(rid):
        return [ln for ln in s.log().split('\n') if rid in ln]

    harness.wait_until(lambda: all(lines_for(c[0]) for c in cases), 3.0)
    time.sleep(0.3)
    for rid, method, path, st in cases:
        lines = lines_for(rid)
        assert len(lines) == 1, '%s %s (%s): %d log lines:\n%s\nlog tail:\n%s' % (
            method, path, rid, len(lines), '\n'.join(lines), '\n'.join(s.log().split('\n')[-20:]))
        ln = lines[0]
        assert method in ln and path in ln and re.search(r'(?<!\d)%d(?!\d)' % st, ln), \
            'line lacks method/path/status %d: %s' % (st, ln)


if __name__ == '__main__':
    harness.run()
