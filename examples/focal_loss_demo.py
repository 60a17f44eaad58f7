"""Focal loss versus binary cross-entropy on a dense, heavily imbalanced task.

A tiny "detector" scores 4096 positions per image, of which about 1% hold an
object. Every position is its own binary problem, as in RetinaNet. The two
losses train the same network for the same number of steps; we report the
average precision on held-out data and plot both curves.

    python examples/focal_loss_demo.py --out-dir runs/demo
"""
import argparse
import os
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import gluon_focal
from gluon_focal.training import plot_curves


def make_data(rng, num_images, positions=4096, positive_rate=0.01, num_features=16):
    """Features of positions; positives are shifted along a hidden direction."""
    direction = np.random.RandomState(1).normal(size=num_features)
    direction /= np.linalg.norm(direction)
    labels = (rng.rand(num_images, positions) < positive_rate).astype(np.float32)
    features = rng.normal(size=(num_images, positions, num_features))
    features += 1.6 * labels[..., None] * direction
    return features.astype(np.float32), labels


def average_precision(scores, labels):
    order = np.argsort(-scores.ravel())
    hits = labels.ravel()[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def build_net():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(32, activation='relu', flatten=False),
            gluon.nn.Dense(1, flatten=False, bias_initializer=gluon_focal.PriorProbability(0.01)))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    return net


def train(loss_fn, train_data, val_data, args):
    mx.random.seed(args.seed)
    net = build_net()
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': args.lr})
    features, labels = train_data
    history = {'train loss': [], 'val AP': []}
    for epoch in range(args.epochs):
        total = 0.0
        for start in range(0, len(features), args.batch_size):
            x = mx.nd.array(features[start:start + args.batch_size])
            y = mx.nd.array(labels[start:start + args.batch_size])
            with autograd.record():
                loss = loss_fn(net(x), y)       # logits N x P x 1, mask N x P
            loss.backward()
            trainer.step(x.shape[0])
            total += loss.sum().asscalar()
        scores = net(mx.nd.array(val_data[0])).asnumpy()[..., 0]
        history['train loss'].append(total / len(features))
        history['val AP'].append(average_precision(scores, val_data[1]))
        print('  epoch %d  loss %.4f  val AP %.3f'
              % (epoch + 1, history['train loss'][-1], history['val AP'][-1]))
    return history


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=3e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out-dir', default='runs/demo')
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    rng = np.random.RandomState(args.seed)
    train_data, val_data = make_data(rng, 128), make_data(rng, 32)
    print('positives: %.2f%% of %d training positions'
          % (100 * train_data[1].mean(), train_data[1].size))

    losses = {
        'focal': gluon_focal.FocalLoss(axis=-1, label_mode='binary', alpha=0.25, gamma=2.0,
                                       normalization='positive'),
        'bce': gluon.loss.SigmoidBCELoss(),
    }
    results = {}
    for name, loss_fn in losses.items():
        print('training with %s loss' % name)
        start = time.time()
        history = train(loss_fn, train_data, val_data, args)
        results[name] = history
        print('  %s: final val AP %.3f (%.1f s)' % (name, history['val AP'][-1],
                                                   time.time() - start))
    curves = {'%s %s' % (loss, metric): values
              for loss, history in results.items() for metric, values in history.items()}
    path = os.path.join(args.out_dir, 'focal_vs_bce.png')
    plot_curves(curves, path, title='focal vs BCE, 1% positives')
    print('val AP  focal %.3f  bce %.3f ; plot written to %s'
          % (results['focal']['val AP'][-1], results['bce']['val AP'][-1], path))


if __name__ == '__main__':
    main()
