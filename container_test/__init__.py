"""`make container-test` (run.py): the images built and run on a real Docker engine."""
