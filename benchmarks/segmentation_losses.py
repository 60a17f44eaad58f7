"""Compare segmentation losses at an equal budget, several seeds each.

Every run is ``examples/train_segmentation.py`` with the same model
(SmallTargetUNet, width 16), data (synthetic small targets, data seed 0, 512
train / 128 val 64-px images), optimiser, schedule and number of epochs; only
the loss and the seed (weight init and shuffling) change.  Runs go one after
another in subprocesses; after each one the table is rewritten, so a partial
result is always on disk and a restarted comparison skips finished runs::

    nice -n 5 python benchmarks/segmentation_losses.py --epochs 8 --seeds 0 1 2 \\
        --out-dir runs/seg-compare

writes ``runs/seg-compare/<arm>-seed<k>/results.json`` per run and
``runs/seg-compare/table.{json,md}``: per arm the mean and sample standard
deviation over seeds of the foreground IoU and F1 at threshold 0.5 and of the
IoU at the best threshold (picked on the validation set: optimistic).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, 'examples', 'train_segmentation.py')

# arm name -> the example's arguments
ARMS = {
    'BCE': ['--loss', 'bce', '--dice-weight', '0'],
    'focal a=0.25': ['--loss', 'focal', '--alpha', '0.25', '--dice-weight', '0'],
    'focal a=0.75': ['--loss', 'focal', '--alpha', '0.75', '--dice-weight', '0'],
    'focal a=0.25 + Dice': ['--loss', 'focal', '--alpha', '0.25', '--dice-weight', '1'],
    'focal a=0.75 + Dice': ['--loss', 'focal', '--alpha', '0.75', '--dice-weight', '1'],
    'BCE + Dice': ['--loss', 'bce', '--dice-weight', '1'],
    'softmax CE (2 classes)': ['--loss', 'softmax', '--dice-weight', '0'],
}


def slug(arm):
    return ''.join(c if c.isalnum() or c in '.=' else '-' for c in arm).replace('--', '-')


def summarise(results):
    """Per arm: mean and sample std (ddof=1) of each final score over the seeds
    run (``results`` holds each run's results.json)."""
    table = {}
    for arm, runs in results.items():
        if not runs:
            continue
        row = {'seeds': [r['args']['seed'] for r in runs],
               'seconds': [r['seconds_this_run'] for r in runs]}
        for key, name in (('final_IoU', 'val_IoU'), ('final_F1', 'val_F1'),
                          ('best_threshold_IoU', 'best_threshold_IoU'),
                          ('best_threshold', 'best_threshold')):
            values = np.array([r['final'][name] for r in runs], np.float64)
            row[key] = {'values': values.round(4).tolist(), 'mean': float(values.mean()),
                        'std': float(values.std(ddof=1)) if len(values) > 1 else None}
        table[arm] = row
    return table


def markdown(table, header):
    fmt = lambda s: '%.3f ± %.3f' % (s['mean'], s['std']) if s['std'] is not None \
        else '%.3f' % s['mean']  # noqa: E731
    lines = [header, '',
             '| loss | seeds | IoU @ 0.5 (mean ± sd) | F1 @ 0.5 | best-threshold IoU '
             '| best thresholds | IoU @ 0.5 per seed | s / run |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for arm, row in table.items():
        lines.append('| %s | %d | %s | %s | %s | %s | %s | %.0f |' % (
            arm, len(row['seeds']), fmt(row['final_IoU']), fmt(row['final_F1']),
            fmt(row['best_threshold_IoU']),
            ', '.join('%.2f' % t for t in row['best_threshold']['values']),
            ', '.join('%.3f' % v for v in row['final_IoU']['values']),
            np.mean(row['seconds'])))
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=8)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--arms', nargs='+', default=list(ARMS), choices=list(ARMS))
    parser.add_argument('--out-dir', default='runs/seg-compare')
    parser.add_argument('extra', nargs=argparse.REMAINDER,
                        help='after --, arguments passed to every run')
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ['--'] else args.extra
    os.makedirs(args.out_dir, exist_ok=True)
    results = {arm: [] for arm in args.arms}
    # seed-major order: a partial comparison has every arm at the same seeds
    for seed in args.seeds:
        for arm in args.arms:
            run_dir = os.path.join(args.out_dir, '%s-seed%d' % (slug(arm), seed))
            path = os.path.join(run_dir, 'results.json')
            if not os.path.exists(path):
                cmd = [sys.executable, EXAMPLE, '--epochs', str(args.epochs), '--seed',
                       str(seed), '--out-dir', run_dir] + ARMS[arm] + extra
                print('%s  %s' % (time.strftime('%H:%M:%S'), ' '.join(cmd[1:])), flush=True)
                with open(run_dir + '.log', 'w') as log:
                    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=ROOT)
            with open(path) as f:
                results[arm].append(json.load(f))
            table = summarise(results)
            with open(os.path.join(args.out_dir, 'table.json'), 'w') as f:
                json.dump(table, f, indent=1)
            header = ('%d epochs per run, seeds %s, command: python benchmarks/'
                      'segmentation_losses.py %s' % (args.epochs, args.seeds,
                                                    ' '.join(argv or sys.argv[1:])))
            with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
                f.write(markdown(table, header))
            print(markdown(table, header), flush=True)


if __name__ == '__main__':
    main()
