#!/usr/bin/env bash
# Build pydensecrf 1.0rc3 (Krähenbühl's C++ dense CRF, the peer of seglab.crf) into the given Python.
# The PyPI sdist ships Cython output that no longer compiles on Python 3.11: delete it, re-cythonize
# with Cython < 3 and build without isolation so that Cython is visible. Usage: install_pydensecrf.sh PYTHON
set -euo pipefail
PY=${1:-python3}
if "$PY" -c "import pydensecrf.densecrf" 2>/dev/null; then exit 0; fi
URL=https://files.pythonhosted.org/packages/31/5a/1c2ab48e8019d282c128bc5c621332267bb954d32eecdda3ba57306b1551/pydensecrf-1.0rc3.tar.gz
SHA256=08be1603af2bede05c7697b6018e8e3059de7cc181e4e784b334889dcc749aa5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" - "$URL" "$SHA256" "$work/pydensecrf.tar.gz" <<'PYEOF'
import hashlib, sys, urllib.request
url, sha256, dest = sys.argv[1:]
data = urllib.request.urlopen(url, timeout=120).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"pydensecrf sdist checksum mismatch for {url}")
open(dest, "wb").write(data)
PYEOF
tar xzf "$work/pydensecrf.tar.gz" -C "$work"
src="$work/pydensecrf-1.0rc3"
rm -f "$src/pydensecrf/eigen.cpp" "$src/pydensecrf/densecrf.cpp"
"$PY" -m pip install 'cython<3' setuptools wheel
"$PY" -m pip install --no-build-isolation "$src"
"$PY" -c "import pydensecrf.densecrf"
