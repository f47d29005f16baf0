#!/usr/bin/env bash
# Make a small fake Lmod module tree (python/3.11.6-gcc-11.4.0 and cuda/12.6.0, as on Savio) under DIR,
# so tests can check the job scripts' `module load` lines against real Lmod.
# Usage: make_fake_lmod.sh DIR   (then: export MODULEPATH=DIR, or `module use DIR`)
set -euo pipefail
M=${1:?usage: make_fake_lmod.sh DIR}
mkdir -p "$M/python" "$M/cuda" "$M/_sw/cuda-12.6.0/bin" "$M/_sw/python-3.11.6/bin"

cat > "$M/python/3.11.6-gcc-11.4.0.lua" <<EOF
help([[Fake python/3.11.6 built with gcc 11.4.0 (test fixture)]])
whatis("Name: python"); whatis("Version: 3.11.6")
family("python")
prepend_path("PATH", "$M/_sw/python-3.11.6/bin")
setenv("FAKE_PYTHON_MODULE", "3.11.6-gcc-11.4.0")
EOF

cat > "$M/cuda/12.6.0.lua" <<EOF
help([[Fake CUDA 12.6.0 (test fixture)]])
whatis("Name: cuda"); whatis("Version: 12.6.0")
setenv("CUDA_HOME", "$M/_sw/cuda-12.6.0")
prepend_path("PATH", "$M/_sw/cuda-12.6.0/bin")
prepend_path("LD_LIBRARY_PATH", "$M/_sw/cuda-12.6.0/lib64")
EOF

printf '#!/bin/sh\necho "nvcc: fake CUDA 12.6.0"\n' > "$M/_sw/cuda-12.6.0/bin/nvcc"
chmod +x "$M/_sw/cuda-12.6.0/bin/nvcc"
