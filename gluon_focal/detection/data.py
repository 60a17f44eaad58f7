"""A small, deterministic object-detection dataset and VOC-format round trip.

``SyntheticShapesDetection`` renders images of coloured shapes (circles,
triangles, squares, crosses, rings) on noisy, cluttered backgrounds.  Its items
look exactly like those of :class:`gluoncv.data.VOCDetection`, so every GluonCV
detection transform, batchify function and metric works on it unchanged:

* ``img``   -- ``mx.nd.NDArray`` of shape ``(H, W, 3)``, dtype ``uint8``, RGB;
* ``label`` -- ``numpy.ndarray`` of shape ``(M, 6)``, dtype ``float64`` (the
  dtype ``VOCDetection`` itself returns), rows
  ``[xmin, ymin, xmax, ymax, class_id, difficult]`` in VOCDetection's
  coordinate convention: 0-based pixel indices of the left/top-most and
  right/bottom-most pixels of the object (VOC's 1-based XML values minus one).

Items are a pure function of ``(seed, index)``: they do not depend on the order
they are read in, on worker processes, or on other items.

``write_voc_detection`` writes any such dataset as a Pascal-VOC folder
(``VOC2007/Annotations``, ``JPEGImages``, ``ImageSets/Main``) and
``voc_detection`` reads it back through ``gluoncv.data.VOCDetection`` with the
class names overridden, giving identical boxes and classes.

Example
-------
>>> from gluon_focal.detection import SyntheticShapesDetection
>>> ds = SyntheticShapesDetection(num_images=100, size=192, seed=0)
>>> img, label = ds[0]
>>> img.shape, label.shape[1], ds.classes[int(label[0, 4])]   # doctest: +SKIP
((192, 192, 3), 6, 'ring')
"""
import os
import xml.etree.ElementTree as ET

import numpy as np
import mxnet as mx
from mxnet import gluon

__all__ = ['CLASSES', 'SyntheticShapesDetection', 'write_voc_detection',
           'voc_detection', 'ShapesVOCDetection', 'write_coco_detection', 'coco_detection']

#: Foreground class names of :class:`SyntheticShapesDetection` (lower case, as
#: ``VOCDetection`` requires).  Class id ``i`` in labels is ``CLASSES[i]``.
CLASSES = ('circle', 'triangle', 'square', 'cross', 'ring')


def _cv2():
    import cv2  # imported lazily: only rendering / JPEG writing need it
    return cv2


def _as_hw(size):
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class SyntheticShapesDetection(gluon.data.Dataset):
    """Deterministic synthetic detection dataset of coloured shapes.

    Parameters
    ----------
    num_images : int, default 512
        Number of images.
    size : int or (H, W), default 192
        Image size.
    seed : int, default 0
        Item ``i`` is rendered from ``numpy.random.default_rng([seed, i])``.
        Use different seeds for train and validation sets.
    classes : sequence of str, default :data:`CLASSES`
        Any non-empty subset/ordering of :data:`CLASSES`.
    min_objects, max_objects : int, default 1, 6
        Number of labelled objects per image (uniform).  Every image has at
        least one object (``VOCDetection`` yields an empty ``(0,)`` label for
        object-less images, which most transforms reject).
    min_size, max_size : int, default 8, None
        Object size range in pixels (log-uniform, so small objects are common).
        ``max_size`` defaults to ``min(H, W) // 2``.
    clutter : int, default 6
        Maximum number of unlabelled distractors per image (thin lines, small
        specks, arcs) drawn *under* the objects.
    noise : float, default 8.0
        Standard deviation of additive Gaussian pixel noise.
    max_overlap : float, default 0.0
        Objects are re-placed (rejection sampling) while their box overlaps an
        earlier object's box by more than this fraction of the smaller box, so
        labelled boxes stay tight (no occlusion) with the default 0.
    transform : callable, optional
        ``transform(img, label)`` applied to each item, as in ``VOCDetection``.
    cache : bool, default False
        Keep every rendered image in memory (H x W x 3 bytes each), so that
        later epochs do not render again; items are the same either way.
    """

    _SHAPES = CLASSES

    def __init__(self, num_images=512, size=192, seed=0, classes=CLASSES,
                 min_objects=1, max_objects=6, min_size=8, max_size=None,
                 clutter=6, noise=8.0, max_overlap=0.0, transform=None, cache=False):
        super(SyntheticShapesDetection, self).__init__()
        self._num_images = int(num_images)
        self._h, self._w = _as_hw(size)
        self._seed = int(seed)
        classes = tuple(classes)
        unknown = [c for c in classes if c not in self._SHAPES]
        if not classes or unknown:
            raise ValueError('classes must be a non-empty subset of %s, got %s'
                             % (self._SHAPES, classes))
        self._classes = classes
        if not 1 <= min_objects <= max_objects:
            raise ValueError('need 1 <= min_objects <= max_objects')
        self._min_objects, self._max_objects = int(min_objects), int(max_objects)
        self._min_size = max(4, int(min_size))
        self._max_size = int(max_size) if max_size else min(self._h, self._w) // 2
        if self._max_size < self._min_size:
            raise ValueError('max_size must be >= min_size')
        self._clutter = int(clutter)
        self._noise = float(noise)
        self._max_overlap = float(max_overlap)
        self._transform = transform
        self._cache = {} if cache else None

    # -- Dataset API -------------------------------------------------------
    @property
    def classes(self):
        """Category names (``label[:, 4]`` indexes this tuple)."""
        return self._classes

    @property
    def num_class(self):
        """Number of foreground classes."""
        return len(self._classes)

    def __len__(self):
        return self._num_images

    def __getitem__(self, idx):
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError('index %d out of range' % idx)
        if self._cache is None:
            img, label = self.render(idx)
        else:
            if idx not in self._cache:
                self._cache[idx] = self.render(idx)
            img, label = self._cache[idx]
            label = label.copy()  # transforms may modify it
        # zero-copy (of a copy, so the cache stays intact): mx.nd.array would wait
        # for the engine's queue, i.e. for the training step the loader overlaps
        img = mx.nd.from_numpy(np.array(img, dtype=np.uint8))
        if self._transform is not None:
            return self._transform(img, label)
        return img, label

    def render_all(self):
        """Render every item into the cache now (``cache=True``), as a dataset on
        disk exists before training: the first epoch then trains at the speed of
        the others. Returns the dataset."""
        if self._cache is None:
            raise ValueError('render_all: the dataset was made with cache=False, so the '
                             'rendered images would not be kept')
        for idx in range(len(self)):
            if idx not in self._cache:
                self._cache[idx] = self.render(idx)
        return self

    def __str__(self):
        return '%s(num_images=%d, size=%dx%d, seed=%d)' % (
            type(self).__name__, self._num_images, self._h, self._w, self._seed)

    # -- rendering ---------------------------------------------------------
    def render(self, idx):
        """Return ``(img, label)`` of item ``idx`` as numpy arrays (HxWx3 uint8 RGB)."""
        cv2 = _cv2()
        rng = np.random.default_rng([self._seed, int(idx)])
        h, w = self._h, self._w
        img = self._background(rng, h, w)
        self._draw_clutter(rng, img)

        n_obj = int(rng.integers(self._min_objects, self._max_objects + 1))
        boxes, rows = [], []
        log_lo, log_hi = np.log(self._min_size), np.log(self._max_size)
        for _ in range(n_obj):
            for _attempt in range(30):
                cls_id = int(rng.integers(len(self._classes)))
                s = int(round(np.exp(rng.uniform(log_lo, log_hi))))
                s = min(s, h - 2, w - 2)
                x0 = int(rng.integers(0, w - s))
                y0 = int(rng.integers(0, h - s))
                cand = (x0, y0, x0 + s - 1, y0 + s - 1)
                if all(_overlap(cand, b) <= self._max_overlap for b in boxes):
                    break
            else:
                continue  # could not place this object without overlap
            mask = np.zeros((h, w), np.uint8)
            self._draw_shape(cv2, rng, mask, self._classes[cls_id], x0, y0, s)
            ys, xs = np.nonzero(mask)
            if xs.size == 0 or xs.max() <= xs.min() or ys.max() <= ys.min():
                continue
            color = self._object_color(rng, img, mask)
            img[mask > 0] = color
            box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
            boxes.append(box)
            rows.append(list(box) + [float(cls_id), 0.0])
        if not rows:  # never happens with the defaults; keep the >=1 guarantee
            return self.render_fallback(rng, img)
        if self._noise > 0:
            img = img.astype(np.float32) + rng.normal(0, self._noise, img.shape)
            img = np.clip(img, 0, 255)
        return img.astype(np.uint8), np.array(rows, dtype=np.float64)

    def render_fallback(self, rng, img):
        """Draw one medium-size object in the centre (used only if placement failed)."""
        cv2 = _cv2()
        h, w = img.shape[:2]
        s = max(self._min_size, min(h, w) // 4)
        x0, y0 = (w - s) // 2, (h - s) // 2
        mask = np.zeros((h, w), np.uint8)
        self._draw_shape(cv2, rng, mask, self._classes[0], x0, y0, s)
        ys, xs = np.nonzero(mask)
        img[mask > 0] = self._object_color(rng, img, mask)
        label = np.array([[xs.min(), ys.min(), xs.max(), ys.max(), 0, 0]], np.float64)
        return img.astype(np.uint8), label

    @staticmethod
    def _background(rng, h, w):
        c0 = rng.uniform(0, 255, 3)
        c1 = rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
        return img.astype(np.uint8)

    def _draw_clutter(self, rng, img):
        cv2 = _cv2()
        h, w = img.shape[:2]
        for _ in range(int(rng.integers(0, self._clutter + 1))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            kind = rng.integers(3)
            if kind == 0:  # thin line
                p0 = (int(rng.integers(w)), int(rng.integers(h)))
                p1 = (int(rng.integers(w)), int(rng.integers(h)))
                cv2.line(img, p0, p1, color, 1)
            elif kind == 1:  # tiny speck (smaller than any object)
                c = (int(rng.integers(w)), int(rng.integers(h)))
                cv2.circle(img, c, int(rng.integers(1, 3)), color, -1)
            else:  # open arc
                c = (int(rng.integers(w)), int(rng.integers(h)))
                r = int(rng.integers(5, max(6, min(h, w) // 6)))
                a0 = int(rng.integers(360))
                cv2.ellipse(img, c, (r, r), 0, a0, a0 + int(rng.integers(30, 120)), color, 1)

    @staticmethod
    def _object_color(rng, img, mask):
        """A random colour that contrasts with the background under the mask."""
        bg = img[mask > 0].reshape(-1, 3).mean(axis=0)
        for _ in range(20):
            color = rng.integers(0, 256, 3)
            if np.abs(color - bg).sum() > 150:
                return color.astype(np.uint8)
        return (255 - bg).astype(np.uint8)

    @staticmethod
    def _draw_shape(cv2, rng, mask, name, x0, y0, s):
        """Fill the shape ``name`` inside the s x s square at (x0, y0) into ``mask``."""
        half = (s - 1) / 2.0
        cx, cy = x0 + half, y0 + half
        if name == 'circle':
            cv2.circle(mask, (int(round(cx)), int(round(cy))), max(2, int(half)), 1, -1)
        elif name == 'ring':
            r = max(3, int(half))
            thick = max(1, int(round(r * rng.uniform(0.25, 0.4))))
            cv2.circle(mask, (int(round(cx)), int(round(cy))), r - (thick + 1) // 2, 1, thick)
        elif name == 'square':
            # axis-aligned, slightly non-square rectangles as well
            aspect = rng.uniform(0.7, 1.0)
            if rng.random() < 0.5:
                wd, ht = s, max(3, int(round(s * aspect)))
            else:
                wd, ht = max(3, int(round(s * aspect))), s
            xa, ya = x0 + (s - wd) // 2, y0 + (s - ht) // 2
            mask[ya:ya + ht, xa:xa + wd] = 1
        elif name == 'triangle':
            pts = np.array([[cx, y0], [x0, y0 + s - 1], [x0 + s - 1, y0 + s - 1]])
            if rng.random() < 0.5:  # upside down
                pts[:, 1] = 2 * cy - pts[:, 1]
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        elif name == 'cross':
            arm = max(1, int(round(s * rng.uniform(0.2, 0.34))))
            a0 = int(round(cx - arm / 2.0))
            mask[y0:y0 + s, max(x0, a0):a0 + arm] = 1
            b0 = int(round(cy - arm / 2.0))
            mask[max(y0, b0):b0 + arm, x0:x0 + s] = 1
        else:  # pragma: no cover - guarded in __init__
            raise ValueError(name)


def _overlap(a, b):
    """Intersection area over the smaller box's area (inclusive pixel boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return iw * ih / float(min(area(a), area(b)))


# ---------------------------------------------------------------------------
# VOC-format folder round trip
# ---------------------------------------------------------------------------
def _voc_year_dir(root, year):
    return os.path.join(os.path.expanduser(root), 'VOC%s' % year)


def write_voc_detection(dataset, root, splits=None, year=2007, classes=None,
                        jpeg_quality=95):
    """Write a detection dataset as a Pascal VOC folder readable by ``VOCDetection``.

    Layout (what ``VOCDetection(root, splits=((year, name),))`` expects)::

        root/VOC2007/Annotations/000000.xml
        root/VOC2007/JPEGImages/000000.jpg
        root/VOC2007/ImageSets/Main/{train,val,trainval}.txt
        root/VOC2007/classes.txt      (class names, one per line; not VOC, read by voc_detection)

    Parameters
    ----------
    dataset : Dataset
        Items ``(img, label)`` like ``VOCDetection``'s (img HxWx3 uint8 RGB
        NDArray or numpy array; label (M, >=5) ``[xmin, ymin, xmax, ymax, cls,
        (difficult)]`` with 0-based inclusive pixel coordinates).
    root : str
        Output root folder.
    splits : dict, optional
        ``{split_name: n or [indices]}``.  An int takes the next ``n`` images
        in order (so ``{'train': 400, 'val': 100}`` uses images 0-399 and
        400-499); a sequence lists dataset indices explicitly.  Default: all
        images in ``'trainval'``.  When both ``train`` and ``val`` are given
        and ``trainval`` is not, ``trainval.txt`` is written as their union.
    year : int or str, default 2007
        Folder is ``VOC<year>``.
    classes : sequence of str, optional
        Class names; default ``dataset.classes``.
    jpeg_quality : int, default 95
        JPEG quality (images are lossy; boxes and classes round-trip exactly
        as long as coordinates are whole pixels).

    Returns
    -------
    dict mapping split name to the list of image ids written to it.
    """
    cv2 = _cv2()
    classes = tuple(classes if classes is not None else dataset.classes)
    if splits is None:
        splits = {'trainval': len(dataset)}
    base = _voc_year_dir(root, year)
    for sub in ('Annotations', 'JPEGImages', os.path.join('ImageSets', 'Main')):
        os.makedirs(os.path.join(base, sub), exist_ok=True)

    split_ids, written = {}, set()
    for name, indices in _split_indices(splits, len(dataset)).items():
        ids = []
        for i in indices:
            img_id = '%06d' % i
            ids.append(img_id)
            if img_id not in written:
                img, label = dataset[i]
                _write_item(cv2, base, img_id, img, label, classes, jpeg_quality)
                written.add(img_id)
        split_ids[name] = ids
    if 'train' in split_ids and 'val' in split_ids and 'trainval' not in split_ids:
        split_ids['trainval'] = split_ids['train'] + split_ids['val']
    for name, ids in split_ids.items():
        with open(os.path.join(base, 'ImageSets', 'Main', name + '.txt'), 'w') as f:
            f.write(''.join(i + '\n' for i in ids))
    with open(os.path.join(base, 'classes.txt'), 'w') as f:
        f.write(''.join(c + '\n' for c in classes))
    return split_ids


def _split_indices(splits, length):
    """``{name: [dataset indices]}`` from ``{name: n or [indices]}``: an int
    takes the next ``n`` images in order, a sequence lists indices."""
    out, cursor = {}, 0
    for name, spec in splits.items():
        if isinstance(spec, (int, np.integer)):
            indices = list(range(cursor, cursor + int(spec)))
            cursor += int(spec)
        else:
            indices = [int(i) for i in spec]
        if indices and (min(indices) < 0 or max(indices) >= length):
            raise ValueError('split %r needs indices in [0, %d)' % (name, length))
        out[name] = indices
    return out


def _write_jpeg(cv2, path, img, jpeg_quality):
    """Write an RGB image (NDArray or numpy) as JPEG; return it as numpy."""
    img = img.asnumpy() if isinstance(img, mx.nd.NDArray) else np.asarray(img)
    img = img.astype(np.uint8)
    ok = cv2.imwrite(path, img[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)])
    if not ok:
        raise IOError('could not write ' + path)
    return img


def _label_rows(label):
    label = np.asarray(label)
    return label.reshape(-1, label.shape[-1]) if label.size else np.zeros((0, 6))


def _write_item(cv2, base, img_id, img, label, classes, jpeg_quality):
    img = _write_jpeg(cv2, os.path.join(base, 'JPEGImages', img_id + '.jpg'), img, jpeg_quality)
    h, w = img.shape[:2]

    ann = ET.Element('annotation')
    ET.SubElement(ann, 'folder').text = os.path.basename(base)
    ET.SubElement(ann, 'filename').text = img_id + '.jpg'
    size = ET.SubElement(ann, 'size')
    ET.SubElement(size, 'width').text = str(w)
    ET.SubElement(size, 'height').text = str(h)
    ET.SubElement(size, 'depth').text = str(img.shape[2] if img.ndim == 3 else 1)
    ET.SubElement(ann, 'segmented').text = '0'
    for row in _label_rows(label):
        obj = ET.SubElement(ann, 'object')
        ET.SubElement(obj, 'name').text = classes[int(row[4])]
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        ET.SubElement(obj, 'truncated').text = '0'
        difficult = int(row[5]) if row.shape[0] > 5 else 0
        ET.SubElement(obj, 'difficult').text = str(difficult)
        bnd = ET.SubElement(obj, 'bndbox')
        # VOC XML is 1-based; VOCDetection subtracts 1 when reading.
        for key, val in zip(('xmin', 'ymin', 'xmax', 'ymax'), row[:4]):
            ET.SubElement(bnd, key).text = _fmt_coord(val + 1)
    ET.ElementTree(ann).write(os.path.join(base, 'Annotations', img_id + '.xml'))


def _fmt_coord(v):
    v = float(v)
    return str(int(v)) if v == int(v) else repr(v)


_VOC_CLASS_CACHE = {}


def _voc_class_for(classes):
    """A ``VOCDetection`` subclass whose ``CLASSES`` are ``classes``.

    ``VOCDetection.classes`` returns ``type(self).CLASSES``, so custom names
    need a subclass (setting an instance attribute is not enough).
    """
    classes = tuple(classes)
    if classes == CLASSES:
        return ShapesVOCDetection
    if classes not in _VOC_CLASS_CACHE:
        from gluoncv.data import VOCDetection
        _VOC_CLASS_CACHE[classes] = type('CustomClassesVOCDetection', (VOCDetection,),
                                         {'CLASSES': classes})
    return _VOC_CLASS_CACHE[classes]


def _make_shapes_voc():
    from gluoncv.data import VOCDetection

    class _ShapesVOCDetection(VOCDetection):
        """``VOCDetection`` over a folder written from ``SyntheticShapesDetection``."""
        CLASSES = CLASSES
    _ShapesVOCDetection.__name__ = _ShapesVOCDetection.__qualname__ = 'ShapesVOCDetection'
    return _ShapesVOCDetection


ShapesVOCDetection = _make_shapes_voc()


def voc_detection(root, split='trainval', classes=None, year=2007, transform=None,
                  **kwargs):
    """Read a VOC folder through ``gluoncv.data.VOCDetection`` with custom class names.

    Parameters
    ----------
    root : str
        Folder containing ``VOC<year>/`` (as written by :func:`write_voc_detection`,
        or a real Pascal VOC ``VOCdevkit`` folder).
    split : str or sequence of str
        Image-set name(s) in ``ImageSets/Main``, e.g. ``'train'``, ``'val'``.
    classes : sequence of str, optional
        Class names (lower case).  Default: ``VOC<year>/classes.txt`` when it
        exists (as :func:`write_voc_detection` writes it), otherwise Pascal
        VOC's 20 classes (``gluoncv.data.VOCDetection.CLASSES``).
    transform : callable, optional
        Passed to ``VOCDetection``.
    kwargs
        Other ``VOCDetection`` arguments (``index_map``, ``preload_label``).
    """
    if classes is None:
        path = os.path.join(_voc_year_dir(root, year), 'classes.txt')
        if os.path.exists(path):
            with open(path) as f:
                classes = tuple(line.strip() for line in f if line.strip())
        else:
            from gluoncv.data import VOCDetection
            classes = VOCDetection.CLASSES
    names = [split] if isinstance(split, str) else list(split)
    if isinstance(year, str) and year.isdigit():
        year = int(year)  # VOCDetection uses a str year as the folder name itself
    cls = _voc_class_for(classes)
    return cls(root=os.path.expanduser(root), splits=tuple((year, n) for n in names),
               transform=transform, **kwargs)


# ---------------------------------------------------------------------------
# COCO-format folder round trip
# ---------------------------------------------------------------------------
def write_coco_detection(dataset, root, splits=None, classes=None, jpeg_quality=95):
    """Write a detection dataset as a COCO folder readable by ``COCODetection``.

    Layout (GluonCV's ``COCODetection`` folder, ``splits=('instances_<name>',)``)::

        root/annotations/instances_train2017.json
        root/train2017/000000.jpg
        root/annotations/instances_val2017.json
        root/val2017/000400.jpg

    The jsons are what annotation tools write: ``images`` (``id``,
    ``file_name``, ``width``, ``height``; no ``coco_url``), ``annotations``
    (``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd``) and the dataset's own
    ``categories`` (ids from 1).  Boxes follow GluonCV's pixel convention
    (``w = xmax - xmin + 1``), so :func:`coco_detection` gives back the same
    boxes.  ``splits`` is ``{name: n or [indices]}`` as for
    :func:`write_voc_detection`; default: all images in ``'train2017'``.
    Returns ``{split name: [image ids]}``.
    """
    import json
    cv2 = _cv2()
    classes = tuple(classes if classes is not None else dataset.classes)
    categories = [{'id': i + 1, 'name': name, 'supercategory': 'object'}
                  for i, name in enumerate(classes)]
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    split_ids = {}
    for name, indices in _split_indices(splits or {'train2017': len(dataset)},
                                        len(dataset)).items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        images, annotations = [], []
        for i in indices:
            img, label = dataset[i]
            file_name = '%06d.jpg' % i
            img = _write_jpeg(cv2, os.path.join(root, name, file_name), img, jpeg_quality)
            images.append({'id': int(i), 'file_name': file_name,
                           'width': int(img.shape[1]), 'height': int(img.shape[0])})
            for row in _label_rows(label):
                xmin, ymin, xmax, ymax = (float(v) for v in row[:4])
                w, h = xmax - xmin + 1, ymax - ymin + 1
                annotations.append({'id': len(annotations) + 1, 'image_id': int(i),
                                    'category_id': int(row[4]) + 1,
                                    'bbox': [xmin, ymin, w, h], 'area': w * h,
                                    'iscrowd': 0})
        with open(os.path.join(root, 'annotations', 'instances_%s.json' % name), 'w') as f:
            json.dump({'images': images, 'annotations': annotations,
                       'categories': categories}, f)
        split_ids[name] = [int(i) for i in indices]
    return split_ids


_COCO_CLASS_CACHE = {}


def _coco_class_for(classes):
    """A ``COCODetection`` subclass whose ``CLASSES`` are ``classes`` and whose
    images are found from ``file_name`` (annotation tools write no ``coco_url``)."""
    classes = tuple(classes)
    if classes not in _COCO_CLASS_CACHE:
        from gluoncv.data import COCODetection

        def _parse_image_path(self, entry):
            if entry.get('coco_url'):  # a real COCO json
                return COCODetection._parse_image_path(self, entry)
            for split in self._splits:  # instances_<name>.json -> <name>/file_name
                path = os.path.join(self._root, split[len('instances_'):]
                                    if split.startswith('instances_') else split,
                                    entry['file_name'])
                if os.path.exists(path):
                    return path
            return path  # COCODetection raises 'not exists' naming it

        _COCO_CLASS_CACHE[classes] = type('CustomClassesCOCODetection', (COCODetection,),
                                          {'CLASSES': list(classes),
                                           '_parse_image_path': _parse_image_path})
    return _COCO_CLASS_CACHE[classes]


def coco_detection(root, split='train2017', transform=None, **kwargs):
    """Read a COCO folder through ``gluoncv.data.COCODetection`` with its own categories.

    Parameters
    ----------
    root : str
        Folder holding ``annotations/instances_<split>.json`` and ``<split>/``
        (as :func:`write_coco_detection` writes it, or a real COCO folder).
    split : str
        Split name, e.g. ``'train2017'`` or ``'val2017'``.
    transform : callable, optional
        Passed to ``COCODetection``.
    kwargs
        Other ``COCODetection`` arguments (``skip_empty``, ``min_object_area``,
        ``use_crowd``); evaluate with ``skip_empty=False`` so that every image
        of the json is scored.

    The class names are the json's ``categories`` (in their order), so the
    dataset works with ``gluoncv.utils.metrics.coco_detection.COCODetectionMetric``.
    Items are ``(img, label)`` with ``label`` rows ``[xmin, ymin, xmax, ymax, class_id]``.
    """
    import json
    root = os.path.expanduser(root)
    path = os.path.join(root, 'annotations', 'instances_%s.json' % split)
    if not os.path.exists(path):
        raise IOError('no COCO annotations %s (expected DIR/annotations/instances_%s.json '
                      'and DIR/%s/)' % (path, split, split))
    with open(path) as f:
        classes = [c['name'] for c in json.load(f)['categories']]
    cls = _coco_class_for(classes)
    return cls(root=root, splits=('instances_' + split,), transform=transform, **kwargs)
