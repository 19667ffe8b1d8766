#!/usr/bin/env bash
# On a lent GPU machine (benchmarks/README.md, "On a lent GPU"): installs the wheels carried in .whl/ (the
# packages its image lacks), then runs benchmarks/device_check.py with its arguments; results go to $OUT.
set -u
cd "$(dirname "$0")/.." || exit 2
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python  # here; the device machine's python3 holds jax
exec "$python" benchmarks/device_check.py "$@"
