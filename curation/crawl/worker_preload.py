"""What a crawl worker process imports first: the forkserver's preload, set up for pixel work.

A worker's parallelism is its own pixel threads. Numpy's OpenBLAS would otherwise start a
thread per core on import that spins for a while unused (0.2 CPU-seconds per process
measured here, 1% of a 5000-image crawl on two cores); it reads this variable when loaded.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import curation.crawl.local  # noqa: E402, F401 - the modules every worker forks with
