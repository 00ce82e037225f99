"""The embedded demo (:mod:`pipelines.demo.run`: ``python -m pipelines.build_lvd --demo``)
and the fixtures it builds from, which tests and benchmarks share: a web served on
loopback, real and generated photos, and edited copies of them."""
