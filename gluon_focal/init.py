"""The prior-probability bias initialisation of the RetinaNet paper (sec. 4.1)."""
import math

import mxnet as mx


def prior_bias(pi):
    """The bias b = -log((1 - pi) / pi) for which sigmoid(b) = pi."""
    if not 0 < pi < 1:
        raise ValueError('pi=%r must be in (0, 1).' % (pi,))
    return -math.log((1 - pi) / pi)


@mx.init.register
class PriorProbability(mx.init.Initializer):
    """Fill with ``b = -log((1 - pi) / pi)`` so that sigmoid(b) = pi.

    With pi = 0.01 every anchor starts out predicting "background" with
    confidence 0.99, so the many easy negatives do not swamp the first
    iterations. Use it for the bias of the last classification layer:
    ``Conv2D(..., bias_initializer=PriorProbability(0.01))`` or by name,
    ``bias_initializer='priorprobability'``; it is stored in saved symbol
    graphs (``mx.sym.var(..., init=PriorProbability())``) like any Initializer.
    """

    def __init__(self, pi=0.01):
        self.bias = prior_bias(pi)
        super(PriorProbability, self).__init__(pi=pi)
        self.pi = pi

    def _fill(self, _, arr):
        arr[:] = self.bias

    _init_bias = _init_weight = _init_default = _fill
