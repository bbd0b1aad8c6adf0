"""`download-model`: fetch the weights (model/fetch.py) and say where they are, for a person or a script.

`python -m worker_app_fastwan.cli.download_model` runs it on its own, with the CLI's exit codes.
"""

from __future__ import annotations

import io
import json
import logging
import sys

from worker_app_fastwan.core.exit_codes import ExitCode
from worker_app_fastwan.core.settings import Settings, SettingsError, load_settings
from worker_app_fastwan.model.fetch import download_model, folder_size, hub_cache

log = logging.getLogger(__name__)

LOG_PROGRESS_EVERY_S = 15.0


def logged_progress() -> type:
    """A tqdm class for the hub that logs the bytes fetched every LOG_PROGRESS_EVERY_S instead of drawing a
    bar: with JSON logs (a container, a docker build baking the model) a 24 GB download still shows it moves."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    class LoggedProgress(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.pop("name", None)  # the hub's own bars take a name; plain tqdm refuses it
            quiet = {"mininterval": LOG_PROGRESS_EVERY_S, "disable": False, "file": io.StringIO()}  # no stray \n
            super().__init__(*args, **{**kwargs, **quiet})

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            info = self.format_dict
            if info.get("unit") == "B" and info.get("total"):
                done, total = int(info["n"]), int(info["total"])
                extra: dict[str, object] = {
                    "bytes": done,
                    "total_bytes": total,
                    "percent": round(100 * done / total, 1),
                }
                extra["bar"] = str(info.get("prefix") or "")
                log.info("downloading the model", extra=extra)
            return True

    return LoggedProgress


def main_download(settings: Settings, *, human: bool = False, json_out: bool = False, path_out: bool = True) -> int:
    """`download-model`: the hub's progress bars and a closing summary on stderr for a person (`human`);
    the folder on stdout (`path_out`), or `{model_id, path, bytes, files}` (`json_out`).

    Raises `ModelUnavailable` (exit 3 through the CLI) when the model cannot be had.
    """
    target = settings.MODEL_PATH or hub_cache()
    if human:
        print(f"fetching {settings.MODEL_ID} into {target} (about 24 GB; resumes a partial download)", file=sys.stderr)
    folder = download_model(settings, progress=human, tqdm_class=None if human else logged_progress())
    size, files = folder_size(folder)
    log.info("model ready", extra={"model": settings.MODEL_ID, "path": str(folder), "bytes": size, "files": files})
    if human:
        from worker_app_fastwan.cli.display import model_summary, print_lines, stderr_console

        print_lines(stderr_console(), model_summary(settings.MODEL_ID, folder, size, files))
    if json_out:
        print(json.dumps({"model_id": settings.MODEL_ID, "path": str(folder), "bytes": size, "files": files}))
    elif path_out:
        print(folder, flush=True)
    return ExitCode.OK


def _main() -> int:
    """`python -m worker_app_fastwan.cli.download_model`: the download on its own, with the CLI's exit codes."""
    from worker_app_fastwan.cli.errors import classify, report, run_command
    from worker_app_fastwan.core.logs import setup_logging

    try:
        settings = load_settings()
    except SettingsError as exc:
        return int(report(classify(exc)))
    fmt = setup_logging(settings.LOG_LEVEL, fmt=settings.LOG_FORMAT)
    return run_command(
        lambda: main_download(settings, human=fmt == "text"), fmt=fmt, debug=settings.LOG_LEVEL == "DEBUG"
    )


if __name__ == "__main__":
    # Through the package's own module, so the exceptions raised are the ones the CLI's run_command knows.
    from worker_app_fastwan.cli.download_model import _main as package_main

    sys.exit(package_main())
