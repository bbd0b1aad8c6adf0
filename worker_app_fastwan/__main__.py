import sys

from worker_app_fastwan.cli.main import main

if __name__ == "__main__":  # the guard matters: the GPU child is spawned and re-imports __main__
    sys.exit(main())
