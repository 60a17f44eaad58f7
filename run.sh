#!/usr/bin/env bash
# Everything a fresh machine needs: creates .venv, installs the package (which
# compiles the fused kernel), then runs the demo or the tests.
#   bash run.sh demo [args]       the main job: train RetinaNet on generated shapes
#   bash run.sh seg-demo [args]   segment 3-30 px targets with focal + Dice (SmallTargetUNet)
#   bash run.sh test [args]       the test suite
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# reinstall when the package definition or the kernel source changed
stamp=.venv/.gluon-focal-installed
if [ ! -f "$stamp" ] || [ -n "$(find setup.py gluon_focal/kernel -newer "$stamp" -type f 2>/dev/null | head -n 1)" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

command=${1:-}
shift || true
case "$command" in
  demo) exec .venv/bin/python examples/train_retinanet.py "$@" ;;
  seg-demo) exec .venv/bin/python examples/train_segmentation.py "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo|seg-demo|test [args]" >&2; exit 2 ;;
esac
