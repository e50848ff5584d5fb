#!/usr/bin/env bash
# Prepares work/carry on a development machine for `scripts/gpu_check.sh --stage plugins` on a GPU
# machine without pip: libpt_trtllm_plugins.so built here (sm_90, `make plugins` into
# work/carry/plugins), and the mpich wheel (mpiexec, libmpi) plus mpi4py for CPython 3.10 to 3.13,
# unpacked. About 20 MB; carry the folder (device run's `carry: ["work/carry"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
carry=work/carry
rm -rf "$carry" && mkdir -p "$carry/wheels"
make plugins PLUGINS_BUILD="$carry/build"
mkdir -p "$carry/plugins" && cp "$carry/build/libpt_trtllm_plugins.so" "$carry/plugins/" && rm -rf "$carry/build"
get() { "$PY" -m pip download -q --no-deps --only-binary=:all: --platform "$1" --python-version "$2" -d "$carry/wheels" "$3"; }
get manylinux_2_28_x86_64 3.11 "mpich==$("$PY" -c 'import importlib.metadata as m; print(m.version("mpich"))')"
"$PY" -c "import zipfile, glob; zipfile.ZipFile(glob.glob('$carry/wheels/mpich-[1-9]*.whl')[0]).extractall('$carry/mpich-wheel')"
mv "$carry"/mpich-wheel/mpich-*.data/data "$carry/mpich" && rm -rf "$carry/mpich-wheel"
chmod +x "$carry"/mpich/bin/*
rm -rf "$carry"/mpich/lib/libmpi_abi.so* "$carry"/mpich/lib/libmpi.so "$carry/mpich/include" "$carry"/mpich/bin/mpic* \
       "$carry"/mpich/bin/mpif*  # mpi4py loads libmpi.so.12; no compilers needed
for v in 10 11 12 13; do
  get manylinux2014_x86_64 3.$v "mpi4py==$("$PY" -c 'import importlib.metadata as m; print(m.version("mpi4py"))')"
  "$PY" -c "import zipfile, glob; zipfile.ZipFile(glob.glob('$carry/wheels/mpi4py-*cp3$v-*.whl')[0]).extractall('$carry/mpi4py-cp3$v')"
done
rm -rf "$carry/wheels"
du -sh "$carry"
