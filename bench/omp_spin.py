"""Does torch's OpenMP spin-wait slow fastclip's CPU path down?  One 33.6 M-element bf16 gradient.

Each round restores the gradient with ``copy_`` (a torch op, as a backward is) and then times one
clipping call of fastclip and of torch; medians of 15 rounds.  Compare the default environment
with libgomp's spinning switched off (the variables must be set before Python starts: libgomp
reads them when torch loads)::

    python bench/omp_spin.py
    GOMP_SPINCOUNT=1000 python bench/omp_spin.py
    OMP_WAIT_POLICY=passive python bench/omp_spin.py

On a 2-core AMD EPYC VM (torch 2.13 CPU, native helper built; three runs each), when the helper
ran its work on fastclip's own worker threads, fastclip took 15-19 ms by default and 12.5-12.6 ms
with GOMP_SPINCOUNT=1000; torch 11-13 and 12.8-12.9 ms: the spinning threads competed with
ours.  Since the helper runs in torch's own OpenMP team (fastclip/csrc/cpu_math.cpp), two runs
each: 8.8-10.4 ms by default, 10.0-11.2 ms with GOMP_SPINCOUNT=1000; torch 9.6-11.8 and
11.9-13.9 ms (1.09-1.25x): the spinning threads are now the ones doing the work.
"""
import statistics
import time

import torch

import fastclip

N, ROUNDS = 33_554_432, 15


def median_ms(fn, param, src) -> float:
    times = []
    for _ in range(ROUNDS):
        param.grad.copy_(src)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    src = torch.randn(N).to(torch.bfloat16)
    param = torch.nn.Parameter(torch.zeros(N, dtype=torch.bfloat16))
    param.grad = src.clone()
    norm = torch.linalg.vector_norm(src.float()).item()
    ours = median_ms(lambda: fastclip.clip_([param], norm / 2), param, src)
    theirs = median_ms(lambda: torch.nn.utils.clip_grad_norm_([param], norm / 2), param, src)
    noclip = median_ms(lambda: fastclip.clip_([param], norm * 2), param, src)
    print(f"clip: fastclip {ours:.2f} ms, torch {theirs:.2f} ms ({theirs / ours:.2f}x); "
          f"fastclip without clipping {noclip:.2f} ms")


if __name__ == "__main__":
    main()
