"""Detection post-processing shared by :class:`RetinaNet` and :class:`SigmoidSSD`.

Both detectors score every (anchor, class) pair independently, keep a
pre-NMS top-k of the pairs above a score threshold and run class-wise NMS.
Two things make that both fast in MXNet and exportable to ONNX:

* **Class-wise NMS as class-agnostic NMS on offset boxes.** MXNet's ONNX
  converter maps ``box_nms`` to ONNX ``NonMaxSuppression`` class-agnostically
  (it ignores ``id_index``/``force_suppress=False``) and maps ``topk`` to
  ``max_output_boxes_per_class``. Shifting each box by ``class_id * span``
  (``span`` larger than the extent of all boxes) puts boxes of different
  classes far apart, so class-agnostic NMS never compares them, and both
  MXNet and onnxruntime do the same arithmetic. The original boxes ride
  along as extra columns and are what the detector returns.
* **Only valid rows reach NMS.** ``box_nms`` costs O(rows^2) in MXNet even
  when most rows are below the threshold; sorting the rows by score and
  cutting them (``boolean_mask``) after the last valid row of any image makes
  its cost O(valid^2). Rows dropped that way are below the threshold in every
  image, so the output is unchanged. The cut gives the graph a data-dependent
  shape, which MXNet runs op by op (slower): :class:`RetinaNet` keeps it in a
  graph of its own, :class:`SigmoidSSD` (400 rows) does without it.
"""
import re

from mxnet import gluon

__all__ = ['threshold_topk', 'batch_gather', 'classwise_nms', 'sort_for_nms', 'nms_sorted',
           'GraphStage']


def threshold_topk(F, scores, k, thresh):
    """Top-``k`` entries of ``scores`` (B, M) along axis 1 among those above ``thresh``.

    Returns ``(top_scores, indices)``, both (B, k) float32; slots without a score
    above ``thresh`` (including the ones when M < k) hold score -1. Equal to
    "top-k first, threshold second" (the set of pairs kept is the same).
    """
    masked = F.where(scores > thresh, scores, F.ones_like(scores) * -1.)
    # k padding entries so that topk's k never exceeds a small input
    pad = F.broadcast_axis(F.ones_like(masked.slice_axis(axis=1, begin=0, end=1)),
                           axis=1, size=k) * -1.
    return F.topk(F.concat(masked, pad, dim=1), axis=1, k=k, ret_typ='both', dtype='float32')


def batch_gather(F, data, index):
    """``data`` (B, M, W) rows picked by ``index`` (B, k) float -> (B, k, W)."""
    batch_idx = F.broadcast_like(F.contrib.arange_like(index, axis=0).reshape((-1, 1)), index)
    return F.gather_nd(data, F.stack(batch_idx, index, axis=0))


def classwise_nms(F, ids, scores, boxes, nms_thresh, valid_thresh, keep, cut=True):
    """Class-wise greedy NMS of (B, R) candidates, exportable to ONNX:
    :func:`sort_for_nms` then :func:`nms_sorted`.

    Parameters
    ----------
    ids, scores : Symbol or NDArray, (B, R, 1)
        Class id (-1: not a detection) and score of each candidate.
    boxes : (B, R, 4)
        Corner-format boxes.
    nms_thresh : float
        Suppress a box whose IoU with a higher-scoring box of its class exceeds this.
    valid_thresh : float
        Only candidates scoring above this (and with id >= 0) are detections.
    keep : int or None
        Rows returned per image, best first, missing rows -1; None: all rows
        (with ``cut``, their number varies).
    cut : bool
        Cut the rows after the last valid one before NMS (see the module
        docstring): worth it for thousands of rows, and it makes the graph's
        shapes data-dependent, which MXNet runs op by op.

    Returns
    -------
    ids (B, keep, 1), scores (B, keep, 1), boxes (B, keep, 4), as
    ``box_nms(..., id_index=0, force_suppress=False)`` followed by a slice would
    give them.
    """
    rows, in_cut = sort_for_nms(F, ids, scores, boxes, valid_thresh, cut)
    return nms_sorted(F, rows, in_cut, nms_thresh, valid_thresh, keep)


def sort_for_nms(F, ids, scores, boxes, valid_thresh, cut=True):
    """The static-shape part of :func:`classwise_nms`: (B, R, 10) rows [id, score,
    class-offset box, box] sorted by score, invalid ones scored -1 (last), and with
    ``cut`` the (R,) mask of the rows up to the last valid one of any image (at
    least one row: box_nms needs one), else None."""
    valid = (ids > -0.5) * (scores > valid_thresh)                # (B, R, 1)
    scores = F.where(valid, scores, F.ones_like(scores) * -1.)
    # boxes of class c move by c * span: span exceeds every valid box's extent
    span = F.max(F.abs(F.where(F.broadcast_like(valid, boxes), boxes, F.zeros_like(boxes))))
    shifted = F.broadcast_add(boxes, F.broadcast_mul(F.maximum(ids, 0.), span * 2 + 1))
    # sort by score (box_nms sorts stably; a stable argsort keeps its tie order)
    order = F.argsort(scores.reshape((0, -1)), axis=1, is_ascend=False, dtype='float32')
    rows = batch_gather(F, F.concat(ids, scores, shifted, boxes, dim=-1), order)
    if not cut:
        return rows, None
    valid = rows.slice_axis(axis=2, begin=1, end=2).reshape((0, -1)) > valid_thresh
    num_valid = F.max(F.sum(valid, axis=1))
    position = F.contrib.arange_like(valid, axis=1)
    return rows, F.broadcast_lesser(position, F.maximum(num_valid, 1.))


def nms_sorted(F, rows, in_cut, nms_thresh, valid_thresh, keep):
    """The rest of :func:`classwise_nms`: the rows of :func:`sort_for_nms` (cut to
    ``in_cut`` unless it is None) through class-agnostic NMS on the offset boxes."""
    if in_cut is not None:
        # (boolean_mask's axis=1 is broken for 3-d data in MXNet 1.9.1: mask axis 0)
        rows = F.contrib.boolean_mask(rows.transpose((1, 0, 2)), in_cut).transpose((1, 0, 2))
    dets = F.contrib.box_nms(rows, overlap_thresh=nms_thresh, valid_thresh=valid_thresh,
                             topk=-1, coord_start=2, score_index=1, id_index=-1,
                             force_suppress=True, in_format='corner', out_format='corner')
    if keep is not None:  # fixed number of rows: pad with -1, then slice
        pad = F.ones_like(dets.slice_axis(axis=1, begin=0, end=1)) * -1.
        dets = F.concat(dets, F.broadcast_axis(pad, axis=1, size=keep), dim=1)
        dets = dets.slice_axis(axis=1, begin=0, end=keep)
    return (dets.slice_axis(axis=2, begin=0, end=1), dets.slice_axis(axis=2, begin=1, end=2),
            dets.slice_axis(axis=2, begin=6, end=10))


class GraphStage(gluon.HybridBlock):
    """One part of a block's hybridized graph: ``method(F, *inputs)``, a method of
    that block, whose parameters it uses. The block is not a child: hybridizing the
    stage must not hybridize (and so clear) the block."""

    def __init__(self, method, **kwargs):
        super(GraphStage, self).__init__(**kwargs)
        self._method = method

    def collect_params(self, select=None):
        if select is None and self._cached_graph:  # the ones this stage's graph reads
            used = self._cached_graph[1].list_inputs()
            select = '^(%s)$' % '|'.join(re.escape(name) for name in used)
        return self._method.__self__.collect_params(select)

    def hybrid_forward(self, F, *inputs):  # pylint: disable=arguments-differ
        return self._method(F, *inputs)
