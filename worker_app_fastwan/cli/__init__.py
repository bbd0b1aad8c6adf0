"""The command line: `python -m worker_app_fastwan ...` (main), its parser, display, errors and settings check."""
