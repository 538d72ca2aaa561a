#!/usr/bin/env python3
"""End-to-end: a 201 is durable (kill -9 and restart), equal bytes share one
blob, the sweeper never takes a blob that an image still refers to, and it
does collect unreferenced blobs."""

import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Server, test, corpus, describe, sha256, blob_files, blob_path  # noqa: E402

EAGER = ['--blob-grace', '0s', '--sweep-interval', '100ms']


def all_ids(s):
    st, h, b = s.get('/v1/images?limit=1000')
    assert st == 200, describe(st, h, b)
    return [i['id'] for i in json.loads(b)['items']]


def assert_downloads(s, img, data, when=''):
    st, h, b = s.get('/v1/images/' + img['id'])
    assert st == 200, 'image %s %s\n%s' % (img['id'], when, describe(st, h, b[:300]))
    assert sha256(b) == sha256(data), 'image %s bytes differ %s' % (img['id'], when)


@test
def kill_9_after_201_then_restart_keeps_every_image():
    s = Server()
    files = ['photos/small-rocket-640x427.jpg', 'formats/car-rgb-800x533.png',
             'formats/car-animated-8frames.gif', 'photos/mid-canon-400d-storm-1920x1280.jpg']
    kept = []
    for rel in files:
        data = harness.read_bytes(corpus(rel))
        kept.append((s.upload_ok(corpus(rel)), data))
    gone = s.upload_ok(harness.make_png(seed=1, text='deleted before the crash'), 'image/png')
    st, h, b = s.request('DELETE', '/v1/images/' + gone['id'])
    assert st == 204, describe(st, h, b)
    # the very last 201 right before the kill
    last_data = harness.make_png(seed=2, text='last one')
    kept.append((s.upload_ok(last_data, 'image/png'), last_data))
    s.kill9()

    s2 = Server(data_dir=s.data_dir)
    ids = all_ids(s2)
    for img, data in kept:
        assert img['id'] in ids, 'image %s missing from the list after kill -9' % img['id']
        assert_downloads(s2, img, data, 'after kill -9')
        st, h, b = s2.get('/v1/images/%s/info' % img['id'])
        assert st == 200, describe(st, h, b)
        inf = json.loads(b)
        for k in ('format', 'width', 'height', 'bytes', 'sha256', 'created_at'):
            assert inf[k] == img[k], '%s: %r vs %r' % (k, inf[k], img[k])
        assert os.path.isfile(blob_path(s2.blobs_dir, img['sha256'])), \
            'no blob file at %s' % blob_path(s2.blobs_dir, img['sha256'])
    assert gone['id'] not in ids, 'a deleted image came back after kill -9'
    want_order = [img['id'] for img, _ in reversed(kept)]
    assert [i for i in ids if i in set(want_order)] == want_order, 'list order changed'
    img = s2.upload_ok(corpus('photos/small-canon-ixus-640x480.jpg'))
    assert img['width'] == 640
    s2.stop()


@test
def kill_9_during_a_stream_of_uploads_loses_no_201():
    s = Server()
    done = []   # (img, data) that got 201
    errors = []
    stop = threading.Event()

    def uploader(k):
        n = 0
        while not stop.is_set() and n < 200:
            n += 1
            data = harness.make_png(96, 64, seed=k * 1000 + n, text='stream %d %d' % (k, n))
            try:
                st, h, b = s.upload(data, 'image/png', timeout=10)
            except Exception as e:  # the kill cuts requests in flight
                errors.append(repr(e))
                return
            if st == 201:
                done.append((json.loads(b), data))

    threads = [threading.Thread(target=uploader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    harness.wait_until(lambda: len(done) >= 10, 10.0)
    time.sleep(0.3)
    s.kill9()
    stop.set()
    for t in threads:
        t.join(15)
    assert done, 'no upload succeeded before the kill'
    s2 = Server(data_dir=s.data_dir)
    ids = set(all_ids(s2))
    for img, data in done:
        assert img['id'] in ids, 'image %s (201 before kill -9) is missing' % img['id']
        assert_downloads(s2, img, data, 'after kill -9')
    s2.stop()


@test
def concurrent_uploads_of_the_same_bytes_share_one_blob():
    s = Server()
    path = corpus('photos/mid-canon-400d-storm-1920x1280.jpg')
    data = harness.read_bytes(path)
    n = 8
    barrier = threading.Barrier(n)
    results = [None] * n

    def up(i):
        try:
            barrier.wait(10)
            results[i] = s.upload(data, 'image/jpeg', timeout=60)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=up, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    ids = []
    for r in results:
        assert not isinstance(r, Exception) and r is not None, 'upload failed: %r' % (r,)
        st, h, b = r
        assert st == 201, describe(st, h, b)
        img = json.loads(b)
        assert img['sha256'] == sha256(data), img
        ids.append(img['id'])
    assert len(set(ids)) == n, 'ids not distinct: %s' % ids
    files = blob_files(s.blobs_dir)
    want = os.path.relpath(blob_path(s.blobs_dir, sha256(data)), s.blobs_dir)
    assert files == [want], 'blob files: %s, want exactly [%s]' % (files, want)
    for i in ids:
        assert_downloads(s, {'id': i}, data)
    s.stop()


@test
def no_temp_files_left_after_uploads():
    s = Server()
    data = harness.read_bytes(corpus('photos/small-rocket-640x427.jpg'))
    for _ in range(3):
        s.upload_ok(data, 'image/jpeg')
    s.upload_ok(harness.make_png(seed=3), 'image/png')
    tmp = os.path.join(s.blobs_dir, 'tmp')
    left = harness.wait_until(lambda: not os.path.isdir(tmp) or not os.listdir(tmp), 2.0)
    assert left, 'left in blobs/tmp: %s' % os.listdir(tmp)
    assert len(blob_files(s.blobs_dir)) == 2, blob_files(s.blobs_dir)
    s.stop()


@test
def delete_while_uploading_the_same_bytes_never_loses_a_201():
    s = Server(EAGER)
    kept = []     # (img, data) that got 201 and were never deleted
    problems = []
    rnd = random.Random(42)
    end = time.monotonic() + 60
    for rnd_i in range(20):
        if time.monotonic() > end:
            break
        data = harness.make_png(160, 120, seed=500 + rnd_i, text='race %d' % rnd_i)
        a = s.upload_ok(data, 'image/png')
        out = {}
        jitter_up = rnd.random() * 0.15
        jitter_del = rnd.random() * 0.15

        def do_delete():
            time.sleep(jitter_del)
            out['delete'] = s.request('DELETE', '/v1/images/' + a['id'])

        def do_upload(k):
            time.sleep(jitter_up * k / 2)
            out['up%d' % k] = s.upload(data, 'image/png')

        threads = [threading.Thread(target=do_delete)] + \
            [threading.Thread(target=do_upload, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        st, h, b = out['delete']
        if st != 204:
            problems.append('delete: ' + describe(st, h, b))
        for k in range(3):
            st, h, b = out['up%d' % k]
            if st == 201:
                kept.append((json.loads(b), data))
            else:
                problems.append('upload: ' + describe(st, h, b))
        # let the sweeper run between rounds now and then
        if rnd_i % 4 == 3:
            time.sleep(0.25)
    assert not problems, '\n'.join(problems)
    time.sleep(1.0)
    for img, data in kept:
        assert_downloads(s, img, data, 'after 1 s of sweeps')
    s.restart()
    time.sleep(1.0)
    for img, data in kept:
        assert_downloads(s, img, data, 'after a restart and 1 s of sweeps')
    s.stop()


@test
def sweeper_collects_unreferenced_blobs_and_keeps_shared_ones():
    s = Server(EAGER)
    lone = harness.make_png(seed=900, text='lone')
    x = s.upload_ok(lone, 'image/png')
    px = blob_path(s.blobs_dir, x['sha256'])
    assert os.path.isfile(px), 'no blob at %s: %s' % (px, blob_files(s.blobs_dir))
    st, h, b = s.request('DELETE', '/v1/images/' + x['id'])
    assert st == 204, describe(st, h, b)
    gone = harness.wait_until(lambda: not os.path.exists(px), 5.0)
    assert gone, 'blob of a deleted image still there after 5 s'

    twin = harness.make_png(seed=901, text='twins')
    y = s.upload_ok(twin, 'image/png')
    z = s.upload_ok(twin, 'image/png')
    py = blob_path(s.blobs_dir, y['sha256'])
    st, h, b = s.request('DELETE', '/v1/images/' + y['id'])
    assert st == 204, describe(st, h, b)
    time.sleep(1.5)
    assert os.path.isfile(py), 'blob still referenced by %s was collected' % z['id']
    assert_downloads(s, z, twin, 'after its twin was deleted')
    st, h, b = s.request('DELETE', '/v1/images/' + z['id'])
    assert st == 204, describe(st, h, b)
    gone = harness.wait_until(lambda: not os.path.exists(py), 5.0)
    assert gone, 'blob still there 5 s after its last image was deleted'
    assert s.healthy()
    s.stop()


@test
def sweeper_respects_blob_grace():
    s = Server(['--sweep-interval', '100ms'])  # default grace: 1h
    data = harness.make_png(seed=950, text='graceful')
    img = s.upload_ok(data, 'image/png')
    p = blob_path(s.blobs_dir, img['sha256'])
    st, h, b = s.request('DELETE', '/v1/images/' + img['id'])
    assert st == 204, describe(st, h, b)
    time.sleep(1.5)
    assert os.path.isfile(p), 'blob collected before --blob-grace passed'
    # an upload of the same bytes after the delete reuses the blob
    img2 = s.upload_ok(data, 'image/png')
    assert_downloads(s, img2, data)
    assert blob_files(s.blobs_dir) == [os.path.relpath(p, s.blobs_dir)]
    s.stop()


@test
def sigterm_then_restart_keeps_images():
    s = Server()
    data = harness.read_bytes(corpus('formats/car-lossy-800x533.webp'))
    img = s.upload_ok(data, 'image/webp')
    rc = s.stop()
    assert rc == 0, 'exit status %s after SIGTERM\n%s' % (rc, s.crash_excerpt())
    s.start()
    assert img['id'] in all_ids(s)
    assert_downloads(s, img, data, 'after SIGTERM and restart')
    s.stop()


if __name__ == '__main__':
    harness.run()
