"""The benchmark's frontend and backend apps, run as subprocesses by :mod:`benchmarks.run`."""
