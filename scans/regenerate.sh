#!/usr/bin/env bash
# Regenerate the shipped example scans (deterministic: same seeds, same files).
set -euo pipefail
cd "$(dirname "$0")/.."

ctbayes simulate scans/shepp_logan_64_parallel.h5 --phantom shepp-logan --size 64 --beam parallel \
    --views 30 --arc 180 --noise gaussian --noise-level 0.05 --photons 1e4 --seed 0
ctbayes simulate scans/ellipses_128_fanflat.h5 --phantom ellipses --size 128 --beam fanflat \
    --views 60 --arc 360 --noise gaussian --noise-level 0.05 --photons 1e4 --seed 1
ctbayes simulate scans/rectangles_64_parallel.h5 --phantom rectangles --size 64 --beam parallel \
    --views 20 --arc 180 --noise poisson --noise-level 0.05 --photons 1e4 --seed 2
