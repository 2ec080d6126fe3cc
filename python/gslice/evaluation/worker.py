"""The child process of an isolated model run (run.py): ``python -m gslice.evaluation.worker``."""

from gslice.evaluation.run import serve

if __name__ == "__main__":
    serve()
