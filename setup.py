"""For Apache Beam's remote workers: ``--setup_file=./setup.py`` makes Beam build this
package as an sdist and install it on every worker (Dataflow, Flink, Spark). The package's
metadata and dependencies are in setup.cfg; ``pip install`` reads them without this file."""

from setuptools import setup

setup()
