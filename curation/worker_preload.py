"""What a local worker process imports first: the forkserver's preload.

A worker's parallelism is its own (pixel threads, DataLoader workers). Numpy's OpenBLAS
would otherwise start a thread per core on import, which spins unused; it reads this
variable when loaded, so it is set before anything imports numpy.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import curation.local_runner  # noqa: E402, F401 - the runner's side of every worker
