"""SyntheticShapesDetection and the VOC-format round trip."""
import xml.etree.ElementTree as ET

import numpy as np
import mxnet as mx
import pytest

pytest.importorskip('cv2')
gcv = pytest.importorskip('gluoncv')

from gluon_focal.detection import (CLASSES, SyntheticShapesDetection,  # noqa: E402
                                   voc_detection, write_voc_detection)


def test_items_are_voc_detection_like():
    ds = SyntheticShapesDetection(num_images=6, size=(96, 128), seed=3)
    assert len(ds) == 6
    assert ds.classes == CLASSES and ds.num_class == len(CLASSES)
    for i in range(len(ds)):
        img, label = ds[i]
        assert isinstance(img, mx.nd.NDArray)
        assert img.shape == (96, 128, 3) and img.dtype == np.uint8
        assert isinstance(label, np.ndarray)
        # VOCDetection returns np.array of python floats: float64, (M, 6)
        assert label.dtype == np.float64 and label.ndim == 2 and label.shape[1] == 6
        assert label.shape[0] >= 1


def test_deterministic_and_order_independent():
    a = SyntheticShapesDetection(num_images=5, size=80, seed=11)
    b = SyntheticShapesDetection(num_images=5, size=80, seed=11)
    forward = [a[i] for i in range(5)]
    backward = [b[i] for i in reversed(range(5))][::-1]
    for (ia, la), (ib, lb) in zip(forward, backward):
        np.testing.assert_array_equal(ia.asnumpy(), ib.asnumpy())
        np.testing.assert_array_equal(la, lb)
    # a different seed gives different images
    c = SyntheticShapesDetection(num_images=5, size=80, seed=12)
    assert not np.array_equal(a[0][0].asnumpy(), c[0][0].asnumpy())
    assert a[-1][1].tolist() == a[4][1].tolist()
    with pytest.raises(IndexError):
        a[5]


def test_cache_gives_the_same_items():
    plain = SyntheticShapesDetection(num_images=4, size=48, seed=2)
    cached = SyntheticShapesDetection(num_images=4, size=48, seed=2, cache=True)
    for _ in range(2):  # rendered, then from the cache
        for i in range(4):
            (ia, la), (ib, lb) = plain[i], cached[i]
            np.testing.assert_array_equal(ia.asnumpy(), ib.asnumpy())
            np.testing.assert_array_equal(la, lb)
            lb[:] = -5  # a transform writing into its label does not reach the cache
    assert cached._cache is not None and len(cached._cache) == 4


def test_render_all_fills_the_cache_with_the_same_items():
    plain = SyntheticShapesDetection(num_images=3, size=48, seed=2)
    ready = SyntheticShapesDetection(num_images=3, size=48, seed=2, cache=True).render_all()
    assert sorted(ready._cache) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_array_equal(ready._cache[i][0], plain[i][0].asnumpy())
        np.testing.assert_array_equal(ready[i][1], plain[i][1])
    with pytest.raises(ValueError, match='render_all: the dataset was made with cache=False'):
        plain.render_all()


def test_boxes_valid_tight_and_diverse():
    h, w = 112, 144
    ds = SyntheticShapesDetection(num_images=40, size=(h, w), seed=0, noise=0, clutter=0)
    class_ids, sizes = [], []
    for i in range(len(ds)):
        img, label = ds[i]
        img = img.asnumpy().astype(int)
        for xmin, ymin, xmax, ymax, cls, difficult in label:
            # the same validity rule VOCDetection applies when reading
            assert 0 <= xmin < xmax <= w - 1 and 0 <= ymin < ymax <= h - 1
            assert all(v == int(v) for v in (xmin, ymin, xmax, ymax))
            assert difficult == 0 and 0 <= cls < len(CLASSES)
            class_ids.append(int(cls))
            sizes.append(max(xmax - xmin, ymax - ymin) + 1)
        # objects never overlap with the default max_overlap=0
        for r in range(len(label)):
            for s in range(r + 1, len(label)):
                a, b = label[r], label[s]
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
    assert set(class_ids) == set(range(len(CLASSES)))
    assert min(sizes) <= 12          # small objects exist
    assert max(sizes) >= 40          # and large ones


def test_boxes_are_tight():
    # one object, no noise/clutter: the background is a linear colour ramp, so
    # the object's pixels are those far from a plane fitted outside the box
    h, w = 72, 88
    ds = SyntheticShapesDetection(num_images=15, size=(h, w), seed=4, noise=0, clutter=0,
                                  min_objects=1, max_objects=1)
    yy, xx = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), xx.ravel(), yy.ravel()], 1)
    for i in range(len(ds)):
        img, label = ds[i]
        img = img.asnumpy().reshape(-1, 3).astype(float)
        xmin, ymin, xmax, ymax = label[0, :4].astype(int)
        outside = ~((xx >= xmin) & (xx <= xmax) & (yy >= ymin) & (yy <= ymax)).ravel()
        coef, *_ = np.linalg.lstsq(design[outside], img[outside], rcond=None)
        resid = np.abs(img - design @ coef).sum(1).reshape(h, w)
        assert resid.ravel()[outside].max() < 10       # nothing drawn outside the box
        ys, xs = np.nonzero(resid > 60)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (xmin, ymin, xmax, ymax)


def test_custom_classes_subset():
    ds = SyntheticShapesDetection(num_images=10, size=64, seed=1, classes=('ring', 'cross'))
    assert ds.classes == ('ring', 'cross')
    ids = np.concatenate([ds[i][1][:, 4] for i in range(10)])
    assert set(ids.tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        SyntheticShapesDetection(classes=('hexagon',))


def test_voc_round_trip(tmp_path):
    ds = SyntheticShapesDetection(num_images=7, size=(64, 80), seed=5)
    ids = write_voc_detection(ds, str(tmp_path), {'train': 5, 'val': 2})
    assert ids['train'] == ['%06d' % i for i in range(5)]
    assert ids['val'] == ['000005', '000006']
    base = tmp_path / 'VOC2007'
    for sub in ('Annotations', 'JPEGImages', 'ImageSets/Main'):
        assert (base / sub).is_dir()
    assert (base / 'ImageSets/Main/trainval.txt').read_text().split() == ids['train'] + ids['val']

    # XML is 1-based like real VOC
    root = ET.parse(str(base / 'Annotations' / '000000.xml')).getroot()
    assert root.find('size/width').text == '80' and root.find('size/height').text == '64'
    first = root.find('object/bndbox')
    assert float(first.find('xmin').text) == ds[0][1][0, 0] + 1

    for split, offset in (('train', 0), ('val', 5)):
        voc = voc_detection(str(tmp_path), split)
        assert isinstance(voc, gcv.data.VOCDetection)
        assert voc.classes == CLASSES
        assert len(voc) == len(ids[split])
        for j in range(len(voc)):
            img, label = voc[j]
            ref_img, ref_label = ds[offset + j]
            assert label.dtype == ref_label.dtype
            np.testing.assert_array_equal(label, ref_label)   # identical boxes/classes
            assert img.shape == ref_img.shape and img.dtype == np.uint8
            # JPEG is lossy but close
            diff = np.abs(img.asnumpy().astype(int) - ref_img.asnumpy().astype(int))
            assert diff.mean() < 12


def test_voc_custom_class_names(tmp_path):
    ds = SyntheticShapesDetection(num_images=3, size=48, seed=2, classes=('square', 'circle'))
    write_voc_detection(ds, str(tmp_path), {'trainval': [2, 0]})
    voc = voc_detection(str(tmp_path), 'trainval')   # names from classes.txt
    assert voc.classes == ('square', 'circle')
    np.testing.assert_array_equal(voc[0][1], ds[2][1])
    np.testing.assert_array_equal(voc[1][1], ds[0][1])
    # unknown names in the XML are skipped by VOCDetection: boxes vanish
    other = voc_detection(str(tmp_path), 'trainval', classes=('triangle',))
    assert other.classes == ('triangle',)
    assert all(len(other[i][1]) == 0 for i in range(len(other)))
    # the default-classes reader is untouched by the custom subclasses
    assert gcv.data.VOCDetection.CLASSES[0] == 'aeroplane'


def test_ssd_transform_accepts_items():
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform
    ds = SyntheticShapesDetection(num_images=2, size=64, seed=0)
    img, label = ds.transform(SSDDefaultValTransform(32, 32))[0]
    assert img.shape == (3, 32, 32)
    np.testing.assert_allclose(label[:, :4], ds[0][1][:, :4] / 2, atol=1e-4)
