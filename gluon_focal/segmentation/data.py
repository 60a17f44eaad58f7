"""Deterministic synthetic small-target segmentation data (no download).

Every image is a cluttered, noisy background -- smooth colour clutter, fine
texture, bright distractor lines and large blobs, per-pixel noise -- with a
few *small, faint* targets: soft disks of radius 0.8..3 px (about 3 to 30
pixels each).  The foreground covers well under 1 % of the pixels (capped by
``max_fraction``), which is the regime where the focal loss is meant to help.

Two ways to use it:

* :class:`SyntheticSmallTargets` -- a ``gluon.data.Dataset`` returning
  ``(image, mask)`` the way GluonCV segmentation datasets do: the image is an
  ``H x W x 3`` uint8 NDArray (or whatever ``transform`` makes of it) and the
  mask an ``H x W`` int32 NDArray with ``1`` = target, ``0`` = background and
  ``-1`` = ignore (a thin band around every target, like VOC's boundaries).
* :func:`write_voc_segmentation` -- the same samples written as a Pascal
  VOC-segmentation folder, readable with ``gluoncv.data.VOCSegmentation``
  (see :func:`voc_segmentation` for the ``split='train'`` caveat).

Samples are a pure function of ``(seed, split, index)`` (numpy ``SeedSequence``),
so they are identical on every machine, in every worker process and in every
order of access.
"""
import os

import numpy as np

import mxnet as mx
from mxnet.gluon.data import Dataset

from ..validation import SEGMENTATION_IGNORE_LABEL, VOC_BOUNDARY_LABEL

__all__ = ['SyntheticSmallTargets', 'make_sample', 'write_voc_segmentation',
           'voc_segmentation', 'IGNORE_LABEL', 'VOC_IGNORE_VALUE']

# in the masks the datasets return (GluonCV convention), and in VOC SegmentationClass PNGs
# (GluonCV maps 255 -> -1): the validator's constants, under this module's names
IGNORE_LABEL, VOC_IGNORE_VALUE = SEGMENTATION_IGNORE_LABEL, VOC_BOUNDARY_LABEL
_SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}


def _smooth_field(rng, size, cells):
    """Bilinearly upsampled ``cells x cells`` noise, shape (size, size), ~[-1, 1]."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    pos = np.linspace(0, cells, size)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def make_sample(seed, split, index, size=64, max_targets=3, max_fraction=0.008,
                contrast=(0.15, 0.30), noise=0.05, ignore_border=1):
    """Return ``(image, mask)`` as numpy arrays for one synthetic sample.

    ``image``: ``size x size x 3`` uint8.  ``mask``: ``size x size`` int32 with
    1 = target, 0 = background, ``IGNORE_LABEL`` (-1) within ``ignore_border``
    pixels outside a target's edge (set ``ignore_border=0`` for none).  At
    least one target is always present; the targets cover at most
    ``max_fraction`` of the pixels.  ``contrast`` is the range of a target's
    peak brightness over the background on a 0..1 scale (``noise`` is the
    per-pixel noise standard deviation on that scale).
    """
    rng = np.random.default_rng([int(seed), _SPLIT_IDS.get(split, 3), int(index)])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    # clutter: a smooth colour field, fine texture, distractor lines and blobs
    base = rng.uniform(0.3, 0.6, size=3)
    img = np.empty((size, size, 3))
    for c in range(3):
        img[..., c] = base[c] + 0.15 * _smooth_field(rng, size, 3) \
            + 0.06 * _smooth_field(rng, size, max(4, size // 6))
    for _ in range(rng.integers(1, 4)):                     # thin bright/dark lines
        x0, y0 = rng.uniform(0, size, 2)
        theta = rng.uniform(0, np.pi)
        dist = np.abs((xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta))
        along = np.abs((xx - x0) * np.cos(theta) + (yy - y0) * np.sin(theta))
        length = rng.uniform(size * 0.2, size * 0.8)
        line = np.exp(-0.5 * (dist / 0.6) ** 2) * (along < length / 2)
        img += rng.choice([-1, 1]) * rng.uniform(*contrast) * line[..., None]
    for _ in range(rng.integers(1, 4)):                     # large soft blobs
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(5, 10)
        blob = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (r / 1.5) ** 2)
        img += rng.uniform(*contrast) * blob[..., None]

    # targets: small soft disks, added greyish (all channels), mask = disk
    mask = np.zeros((size, size), np.int32)
    near = np.zeros((size, size), bool)
    budget = max_fraction * size * size
    for _ in range(rng.integers(1, max_targets + 1)):
        r = rng.uniform(0.8, 3.0)
        cy, cx = rng.uniform(4, size - 4, 2)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        disk = d <= r
        if disk.sum() == 0 or (mask.sum() > 0 and mask.sum() + disk.sum() > budget):
            continue
        profile = np.clip(1.5 - d / max(r, 1.0), 0, 1) ** 1.5 * (d <= r + 0.5)
        img += rng.uniform(*contrast) * profile[..., None]
        mask[disk] = 1
        near |= d <= r + ignore_border
    if ignore_border > 0:
        mask[near & (mask == 0)] = IGNORE_LABEL

    img += rng.normal(0.0, noise, size=img.shape)
    img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return img, mask


class SyntheticSmallTargets(Dataset):
    """Seeded synthetic small-target segmentation dataset (binary).

    Parameters
    ----------
    split : 'train' or 'val' (or 'test'); each split has its own samples.
    num_samples : number of images in the split.
    size : height = width of every image.
    seed : global seed; sample ``i`` of a split depends only on (seed, split, i).
    transform : optional callable applied to the ``H x W x 3`` uint8 NDArray
        image (e.g. ``ToTensor`` + ``Normalize``), as in GluonCV datasets.
    **sample_kwargs : forwarded to :func:`make_sample` (``max_targets``,
        ``max_fraction``, ``contrast``, ``noise``, ``ignore_border``).

    Returns ``(image, mask)`` per item; ``mask`` is an ``H x W`` int32 NDArray
    with 1 = target, 0 = background, -1 = ignore.  ``NUM_CLASS`` is 2 (GluonCV
    counts the background): use ``nclass=1`` for a sigmoid model and
    ``nclass=2`` for a softmax one.
    """
    NUM_CLASS = 2
    CLASSES = ('background', 'target')

    def __init__(self, split='train', num_samples=256, size=64, seed=0,
                 transform=None, **sample_kwargs):
        super().__init__()
        self.split = split
        self.num_samples = int(num_samples)
        self.size = int(size)
        self.seed = int(seed)
        self.transform = transform
        self.sample_kwargs = sample_kwargs

    def __len__(self):
        return self.num_samples

    def sample(self, index):
        """``(image, mask)`` as numpy arrays (uint8 HWC, int32 HW)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return make_sample(self.seed, self.split, index, size=self.size,
                           **self.sample_kwargs)

    def __getitem__(self, index):
        img, mask = self.sample(index)
        img = mx.nd.array(img, dtype='uint8')
        if self.transform is not None:
            img = self.transform(img)
        return img, mx.nd.array(mask, dtype='int32')

    @property
    def num_class(self):
        return self.NUM_CLASS

    @property
    def classes(self):
        return self.CLASSES

    @property
    def pred_offset(self):
        return 0


def write_voc_segmentation(root, num_train=64, num_val=16, size=64, seed=0,
                           jpeg_quality=100, **sample_kwargs):
    """Write the synthetic data as a Pascal VOC-segmentation folder.

    Layout (what ``gluoncv.data.VOCSegmentation(root=root)`` reads)::

        root/VOC2012/JPEGImages/<id>.jpg
        root/VOC2012/SegmentationClass/<id>.png   palette PNG: 0, 1, 255 = ignore
        root/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

    ``root`` plays the role of ``VOCdevkit``: GluonCV appends ``VOC2012``
    itself.  ``trainval.txt`` is the union of train and val, as in VOC.
    Images are JPEG (VOC's format; quality ``jpeg_quality``, no chroma
    subsampling), so they read back within a few grey levels, not bit-exact;
    masks are lossless.  Sample ``i`` of split ``s`` is
    ``SyntheticSmallTargets(s, size=size, seed=seed, **sample_kwargs)[i]``.
    Returns ``root``.
    """
    from PIL import Image
    from gluoncv.utils.viz import get_color_pallete  # PIL image with the VOC palette
    voc = os.path.join(root, 'VOC2012')
    dirs = {k: os.path.join(voc, k) for k in
            ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation')}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    lists = {}
    for split, count in (('train', num_train), ('val', num_val)):
        data = SyntheticSmallTargets(split, count, size, seed, **sample_kwargs)
        ids = []
        for i in range(count):
            name = '%s_%06d' % (split, i)
            img, mask = data.sample(i)
            Image.fromarray(img).save(os.path.join(dirs['JPEGImages'], name + '.jpg'),
                                      quality=jpeg_quality, subsampling=0)
            png = get_color_pallete(np.where(mask == IGNORE_LABEL, VOC_IGNORE_VALUE,
                                             mask).astype(np.uint8), 'pascal_voc')
            png.save(os.path.join(dirs['SegmentationClass'], name + '.png'))
            ids.append(name)
        lists[split] = ids
    lists['trainval'] = lists['train'] + lists['val']
    for split, ids in lists.items():
        with open(os.path.join(dirs['ImageSets/Segmentation'], split + '.txt'), 'w') as f:
            f.write(''.join(i + '\n' for i in ids))
    return root


def voc_segmentation(root, split='train', **kwargs):
    """``gluoncv.data.VOCSegmentation`` that reads ``train.txt`` for ``'train'``.

    GluonCV 0.10's ``VOCSegmentation(split='train')`` reads
    ``ImageSets/Segmentation/trainval.txt`` -- which contains the validation
    images too.  This helper builds the GluonCV dataset (all path handling and
    decoding stay GluonCV's) and, for ``split='train'``, keeps only the ids
    listed in ``train.txt``.  ``split='trainval'`` gives GluonCV's behaviour;
    ``'val'``/``'test'`` are passed through.  ``kwargs`` go to
    ``VOCSegmentation`` (``mode``, ``transform``, ``base_size``, ``crop_size``).
    """
    from gluoncv.data import VOCSegmentation
    if split == 'trainval':
        return VOCSegmentation(root=root, split='train', **kwargs)
    dataset = VOCSegmentation(root=root, split=split, **kwargs)
    if split == 'train':
        list_file = os.path.join(root, VOCSegmentation.BASE_DIR,
                                 'ImageSets/Segmentation/train.txt')
        with open(list_file) as f:
            keep = {line.strip() for line in f if line.strip()}
        pairs = [(i, m) for i, m in zip(dataset.images, dataset.masks)
                 if os.path.splitext(os.path.basename(i))[0] in keep]
        dataset.images = [i for i, _ in pairs]
        dataset.masks = [m for _, m in pairs]
    return dataset
