"""`make container-test`: build both images on this machine's Docker engine and run them as users do.

Steps, each printed with its time and a one-line result, then one summary line (`N passed, M failed`):

- engine: uses the running Docker engine, or starts one (`dockerd --storage-driver=overlay2|vfs --iptables=false
  --bridge=none`: overlay2 where overlay mounts work, vfs where not) and stops it at the end; one line and
  exit 1 when none can run.
- base, build: a Debian bookworm base from `debootstrap` (no registry can be pulled from here), then
  `fastwan-stub:test` (Dockerfile.stub) and `fastwan-worker:cpu-test` (Dockerfile.fastwan's runtime stage with
  the CPU torch wheel), with Docker's cache: unchanged sources build in seconds.
- image files: what each image holds (sizes, user, init, capabilities, the pinned dependency set).
- compose: docker-compose.yml is valid (`docker-compose config`) and its services use its images and volumes.
- refusals: WORKER_MODE=bogus, buffer mode without INTERNAL_API_KEY, a read-only state folder.
- buffer: stub + worker containers; a job completes; `docker stop` during the next job: exit 0 within the
  stop grace, and its final status delivered (by the next container from the outbox on the volume, if need be).
- bind mounts: host folders that do not exist yet for STATE_DIR and the model cache.
- kill: `docker kill -s KILL` mid-job; a new container finishes the job once the lease expires.
- zombies: the GPU process killed and an orphan left behind; PID 1 (tini) reaps both.
- queue: HEALTHCHECK turns healthy, /generate completes, `docker stop` exits 0.

Figures (build times, sizes, start to ready, stop to exit) go to bench/results/container_test.json and are
quoted in BENCHMARKS.md. Everything this run creates carries the label below and is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "test-artifacts" / "container-test"
RESULTS = REPO / "bench" / "results" / "container_test.json"
STUB_IMAGE = "fastwan-stub:test"
WORKER_IMAGE = "fastwan-worker:cpu-test"
LABEL = "fastwan.container-test"
STUB_MAX_MB = 400
TORCH_VERSION = "2.13.0"
API_KEY = f"ct-{secrets.token_hex(12)}"
# The tiny model (pipelines/tiny.py) on the CPU; `[tiny:pace=S]` makes each step last S s more, so that a
# job is still running when the test stops or kills its container.
SMALL = {"width": 256, "height": 256, "num_frames": 9, "num_inference_steps": 3}
PACED = "[tiny:pace=3] a red fox in snow"
WORKER_ENV = {
    "PIPELINE_BACKEND": "tiny",
    "STORAGE_BACKEND": "local",
    "HF_HUB_OFFLINE": "1",
    "CLAIM_POLL_S": "0.3",
    "HEARTBEAT_INTERVAL_S": "1",
    "RETRY_MAX_S": "1",
    "DRAIN_TIMEOUT_S": "40",
    "OUTBOX_FLUSH_TIMEOUT_S": "10",
    "LOG_LEVEL": "INFO",
}
STOP_GRACE_S = 60  # docker stop -t: DRAIN_TIMEOUT_S + OUTBOX_FLUSH_TIMEOUT_S + margin, as --stop-timeout 170 is
LEASE_S = 8  # the stub's lease: a killed worker's job goes back to the queue this long after its last renewal


class StepFailed(Exception):
    """A check that did not hold; str() is its one-line message."""


def log(text: str) -> None:
    print(text, flush=True)


def sh(*args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or StepFailed with the end of its output."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StepFailed(f"`{' '.join(args[:3])} …` exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def docker(*args: str, check: bool = True, timeout: float = 600) -> str:
    return sh("docker", *args, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# --- the engine -------------------------------------------------------------------------------------------


class Engine:
    """The machine's Docker engine: the running one, or one started here (and stopped at the end)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ARTIFACTS / "dockerd.log"

    @staticmethod
    def running() -> bool:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0

    def start(self) -> str:
        if shutil.which("docker") is None:
            raise StepFailed("no docker client on PATH (apt-get install docker.io)")
        if self.running():
            return "an engine was already running: using it"
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise StepFailed("no engine running and no dockerd to start (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise StepFailed("no engine running, and starting dockerd needs root")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # overlay2 where the kernel lets this machine mount overlays (each layer stored once); else vfs, which
        # works on any file system and in any sandbox but copies every layer and every container's file
        # system whole. No iptables and no bridge: containers use the host's network, all these tests need.
        forced = os.environ.get("CONTAINER_TEST_STORAGE_DRIVER")
        tried = []
        for driver in [forced] if forced else ["overlay2", "vfs"]:
            why = self._start_dockerd(dockerd, driver)
            if why is None:
                assert self.proc is not None
                return f"started dockerd (pid {self.proc.pid}, {driver} storage, host network only)"
            tried.append(f"{driver}: {why}")
        raise StepFailed(f"dockerd could not start ({'; '.join(tried)}; its log: {self.log_path})")

    def _start_dockerd(self, dockerd: str, driver: str) -> str | None:
        """None once the engine answers; else why it did not (the process is gone then)."""
        cmd = [dockerd, f"--storage-driver={driver}", "--iptables=false", "--bridge=none"]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self.log_path.read_text(errors="replace").strip().splitlines()
                self.proc = None
                return (lines[-1] if lines else "exited")[-300:]
            if self.running():
                return None
            time.sleep(0.5)
        self.stop()
        return "no answer within 60 s"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# --- the run ----------------------------------------------------------------------------------------------


class Run:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.results: list[tuple[str, bool, float, str]] = []
        self.figures: dict[str, Any] = {}
        self.run_id = secrets.token_hex(4)
        self.stub_port = free_port()
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="fastwan-ct-"))
        self.bind_worker = ""  # the container of the bind-mount step, killed by the next step
        self.after_kill = ""  # the container that finished the killed one's job (the zombie step uses it)

    def step(self, name: str, body: Callable[[], str]) -> bool:
        began = time.monotonic()
        log(f"[{began - self.start:7.1f} s] {name} …")
        try:
            summary = body()
            passed = True
        except StepFailed as exc:
            summary, passed = f"FAILED: {exc}", False
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails this step with its one line
            summary, passed = f"FAILED: {type(exc).__name__}: {str(exc)[:300]}", False
        took = time.monotonic() - began
        self.results.append((name, passed, took, summary))
        log(
            f"[{time.monotonic() - self.start:7.1f} s] {name}: {'ok' if passed else 'FAILED'} in {took:.1f} s: "
            f"{summary.removeprefix('FAILED: ')}"
        )
        return passed

    # -- containers --------------------------------------------------------------------------------------

    def name(self, what: str) -> str:
        return f"fastwan-ct-{self.run_id}-{what}"

    def volume(self, what: str) -> str:
        volume = self.name(what)
        docker("volume", "create", "--label", LABEL, volume)
        self.volumes.append(volume)
        return volume

    def run_container(self, what: str, image: str, *args: str, env: dict[str, str] | None = None) -> str:
        name = self.name(what)
        env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
        docker("run", "-d", "--name", name, "--label", LABEL, "--network", "host", *env_args, *args, image)
        self.containers.append(name)
        return name

    def worker(self, what: str, *args: str, **env: str) -> str:
        full = {
            **WORKER_ENV,
            "WORKER_MODE": "buffer",
            "ORCHESTRATOR_BASE_URL": f"http://127.0.0.1:{self.stub_port}",
            "INTERNAL_API_KEY": API_KEY,
            "BUFFER_WORKER_ID": what,
            **env,
        }
        return self.run_container(what, WORKER_IMAGE, f"--stop-timeout={STOP_GRACE_S}", *args, env=full)

    def cleanup(self) -> None:
        for name in reversed(self.containers):
            docker("rm", "-f", "-v", name, check=False)
        for volume in self.volumes:
            docker("volume", "rm", "-f", volume, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the stub ----------------------------------------------------------------------------------------

    @property
    def stub_url(self) -> str:
        return f"http://127.0.0.1:{self.stub_port}"

    def submit(self, prompt: str = "a red fox in snow", **fields: Any) -> str:
        response = httpx.post(f"{self.stub_url}/v1/jobs", json={"prompt": prompt, **SMALL, **fields}, timeout=10)
        if response.status_code != 201:
            raise StepFailed(f"the stub refused a job: {response.status_code} {response.text[:200]}")
        return str(response.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.stub_url}/v1/jobs/{job_id}", timeout=10).json())

    def wait_status(self, job_id: str, statuses: set[str], timeout_s: float, why: str = "") -> dict[str, Any]:
        view = wait(
            lambda: (v := self.job(job_id))["status"] in statuses and v,
            timeout_s,
            f"job {job_id} to be {'/'.join(sorted(statuses))}{why}",
        )
        return dict(view)

    def wait_running(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        """Until the job is denoising (its GPU work has begun)."""
        view = wait(
            lambda: (v := self.job(job_id))["status"] == "running" and v["stage"] == "denoising" and v,
            timeout_s,
            f"job {job_id} to be denoising",
        )
        return dict(view)


def container_state(name: str) -> dict[str, Any]:
    return dict(json.loads(docker("inspect", "--format", "{{json .State}}", name)))


def logs_tail(name: str, lines: int = 5) -> str:
    done = subprocess.run(["docker", "logs", "--tail", str(lines), name], capture_output=True, text=True)
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


def stop_and_time(name: str, grace_s: int) -> tuple[float, int]:
    """`docker stop -t grace` → (seconds until it returned, the container's exit code)."""
    began = time.monotonic()
    docker("stop", "-t", str(grace_s), name, timeout=grace_s + 60)
    took = time.monotonic() - began
    state = container_state(name)
    return took, int(state["ExitCode"])


# --- the steps --------------------------------------------------------------------------------------------


def base_tag() -> str:
    """The base image's tag carries a hash of the script that makes it: a changed script makes a new one."""
    digest = hashlib.sha256((HERE / "base_image.sh").read_bytes()).hexdigest()[:12]
    return f"fastwan-debian:bookworm-{digest}"


def step_base() -> str:
    tag = base_tag()
    had = subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0
    sh(str(HERE / "base_image.sh"), tag, timeout=1200)
    size = docker("image", "inspect", "--format", "{{.Size}}", tag).strip()
    return f"{tag}, {int(size) / 1e6:.0f} MB ({'reused' if had else 'debootstrapped now'})"


def ca_bundle() -> Path | None:
    """The CA bundle pip trusts here (this machine's HTTPS may go through a proxy with its own CA)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("REQUESTS_CA_BUNDLE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    configured = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True
    ).stdout.strip()
    for candidate in (configured, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def step_context() -> str:
    """.docker-ci/: the CPU torch wheel (wherever pip takes it from here) and the CA bundle, for the builds."""
    folder = REPO / ".docker-ci"
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    want = f"torch-{TORCH_VERSION}+cpu-cp311-cp311-"
    if not any(p.name.startswith(want) for p in wheels.glob("*.whl")):
        for old in wheels.glob("*.whl"):
            old.unlink()
        # Where pip finds it here (a local wheel folder, an index with CPU builds: docs/deploy.md); the
        # image's Python is bookworm's 3.11, whatever runs this script.
        sh(
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", str(wheels),
            f"torch=={TORCH_VERSION}+cpu" if os.environ.get("TORCH_CPU_INDEX") else f"torch=={TORCH_VERSION}",
            *(["--index-url", os.environ["TORCH_CPU_INDEX"]] if os.environ.get("TORCH_CPU_INDEX") else []),
            timeout=1200,
        )  # fmt: skip
    found = [p for p in wheels.glob("*.whl") if p.name.startswith("torch-")]
    if not found or "+cpu" not in found[0].name:
        raise StepFailed(
            f"no CPU torch {TORCH_VERSION} wheel for Python 3.11 here ({[p.name for p in found]}); "
            "set TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu"
        )
    ca = ca_bundle()
    target = folder / "ca.pem"
    if ca is not None:
        shutil.copyfile(ca, target)
    elif target.exists():
        target.unlink()
    return f"{found[0].name} ({found[0].stat().st_size / 1e6:.0f} MB); CA bundle {ca or 'none (plain PyPI)'}"


def build(run: Run, image: str, dockerfile: str, *build_args: str, target: str | None = None) -> str:
    args = [f"--build-arg={a}" for a in (f"BASE_IMAGE={base_tag()}", *build_args)]
    if target:
        args.append(f"--target={target}")
    began = time.monotonic()
    log_file = ARTIFACTS / f"build-{image.replace(':', '-')}.log"
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    with log_file.open("w") as out:
        done = subprocess.run(
            ["docker", "build", "--network", "host", "-f", dockerfile, *args, "-t", image, "."],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=1800,
        )  # fmt: skip
    took = time.monotonic() - began
    text = log_file.read_text(errors="replace")
    if done.returncode != 0:
        raise StepFailed(f"docker build {image} failed; the end of {log_file}: {text.strip().splitlines()[-1][:300]}")
    steps = len(re.findall(r"^Step \d+/\d+ :", text, re.M))
    cached = text.count("---> Using cache")
    runs = len(re.findall(r"^ ---> Running in ", text, re.M))
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).strip())
    run.figures[image] = {"build_s": round(took, 1), "size_mb": round(size / 1e6), "cached_steps": cached}
    return f"{image} in {took:.1f} s ({steps} steps, {cached} from cache, {runs} run), {size / 1e6:.0f} MB"


def in_image(image: str, code: str, *args: str) -> Any:
    """Run Python code inside the image (as root, without its entrypoint) and return what it printed as JSON."""
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code, *args)
    return json.loads(out)


IMAGE_FACTS = r"""
import importlib.metadata as md, json, os, pwd, shutil
dists = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
print(json.dumps({
    "dists": dists,
    "files": {p: os.path.exists(p) for p in ("/usr/bin/tini", "/usr/bin/setpriv", "/app/run_fastwan_worker.sh",
                                              "/src", "/opt/fastwan-model")},
    "entry_exec": os.access("/app/run_fastwan_worker.sh", os.X_OK),
    "ca_or_wheels": [p for p in ("/src/ca.pem",) if os.path.exists(p)],
    "worker_uid": pwd.getpwnam("worker").pw_uid,
    "python": os.path.realpath(shutil.which("python")),
}))
"""


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def step_worker_files() -> str:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", WORKER_IMAGE))
    env = dict(item.split("=", 1) for item in config["Env"])
    problems = []
    if config.get("User"):
        problems.append(f"USER {config['User']}: the entrypoint must start as root to own bind mounts")
    if env.get("RUN_AS_USER") != "worker":
        problems.append("RUN_AS_USER is not worker")
    if "video" not in env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(","):
        problems.append(f"NVIDIA_DRIVER_CAPABILITIES={env.get('NVIDIA_DRIVER_CAPABILITIES')} lacks video (NVENC)")
    if config["Entrypoint"] != ["/usr/bin/tini", "--", "/app/run_fastwan_worker.sh"]:
        problems.append(f"entrypoint {config['Entrypoint']}")
    if not config.get("Healthcheck"):
        problems.append("no HEALTHCHECK")
    facts = in_image(WORKER_IMAGE, IMAGE_FACTS)
    files = facts["files"]
    for path in ("/usr/bin/tini", "/usr/bin/setpriv", "/app/run_fastwan_worker.sh", "/opt/fastwan-model"):
        if not files[path]:
            problems.append(f"{path} missing")
    if files["/src"] or facts["ca_or_wheels"]:
        problems.append("build leftovers (/src, CA bundle) in the runtime image")
    if not facts["entry_exec"]:
        problems.append("the entrypoint is not executable")
    if facts["worker_uid"] != 10001:
        problems.append(f"worker is uid {facts['worker_uid']}, not 10001")
    # The dependency set: exactly constraints.txt's versions (torch's local tag aside), no fastvideo.
    pins = constraints()
    dists = facts["dists"]
    dists.pop("worker-app-fastwan", None)
    unpinned = sorted(n for n in dists if n not in pins)
    wrong = sorted(f"{n} {v} (pinned {pins[n]})" for n, v in dists.items() if n in pins and v.split("+")[0] != pins[n])
    if unpinned:
        problems.append(f"not in constraints.txt: {unpinned}")
    if wrong:
        problems.append(f"other versions than constraints.txt: {wrong}")
    if "fastvideo" in dists or "fastvideo-kernel" in dists:
        problems.append("fastvideo in the default image")
    for name in ("torch", "diffusers", "transformers", "accelerate"):
        if name not in dists:
            problems.append(f"{name} missing")
    if problems:
        raise StepFailed("; ".join(problems))
    return (
        f"{len(dists)} packages, each at its constraints.txt pin (torch {dists['torch']}), no fastvideo; "
        f"tini, setpriv, user worker 10001, starts as root, "
        f"NVIDIA_DRIVER_CAPABILITIES={env['NVIDIA_DRIVER_CAPABILITIES']}"
    )


def step_stub_files() -> str:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", STUB_IMAGE))
    size_mb = int(docker("image", "inspect", "--format", "{{.Size}}", STUB_IMAGE).strip()) / 1e6
    problems = []
    if size_mb > STUB_MAX_MB:
        problems.append(f"{size_mb:.0f} MB, over the {STUB_MAX_MB} MB target")
    if config.get("User") in ("", "root", "0", "0:0", None):
        problems.append("runs as root")
    names = "sorted(d.metadata['Name'].lower() for d in md.distributions())"
    facts = in_image(STUB_IMAGE, f"import importlib.metadata as md, json; print(json.dumps({names}))")
    heavy = sorted(set(facts) & {"torch", "diffusers", "transformers", "numpy", "accelerate"})
    if heavy:
        problems.append(f"carries {heavy}")
    if "/var/lib/fastwan-stub" not in (config.get("Volumes") or {}):
        problems.append("no volume for its database")
    if problems:
        raise StepFailed("; ".join(problems))
    return f"{size_mb:.0f} MB (target ≤ {STUB_MAX_MB}), user {config['User']}, {len(facts)} packages, no torch"


def step_compose() -> str:
    compose_bin = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if compose_bin is None:
        raise StepFailed("no docker-compose (pip install '.[container]')")
    env = {**os.environ, "INTERNAL_API_KEY": "x"}
    sh(compose_bin, "-f", str(REPO / "docker-compose.yml"), "--profile", "queue", "config", "--quiet", env=env)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volumes = set(compose.get("volumes") or {})
    images = {"Dockerfile.stub": "fastwan-stub:", "Dockerfile.fastwan": "fastwan-worker:"}
    problems = []
    used: set[str] = set()
    for name, service in compose["services"].items():
        dockerfile = service.get("build", {}).get("dockerfile")
        if dockerfile not in images or not service.get("image", "").startswith(images[dockerfile]):
            problems.append(f"{name}: image {service.get('image')} is not what {dockerfile} builds")
        if "stub" in name and dockerfile != "Dockerfile.stub":
            problems.append(f"{name}: a stub service must use the stub image")
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
                if source not in volumes:
                    problems.append(f"{name}: volume {source} is not defined")
    if volumes - used:
        problems.append(f"volumes defined and never used: {sorted(volumes - used)}")
    if problems:
        raise StepFailed("; ".join(problems))
    services = len(compose["services"])
    return f"valid ({Path(compose_bin).name} config); {services} services on their images, volumes {sorted(used)}"


def refused(run: Run, what: str, *args: str, want: str, **env: str) -> str:
    """The container exits non-zero, printing one line that names `want`, and no traceback."""
    env_args = [f"--env={k}={v}" for k, v in env.items()]
    began = time.monotonic()
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *env_args, *args, WORKER_IMAGE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - began
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode == 0:
        raise StepFailed(f"{what}: the container started (exit 0)")
    if "Traceback" in done.stdout + done.stderr:
        raise StepFailed(f"{what}: a traceback: {lines[-1] if lines else ''}")
    if len(lines) != 1 or want not in lines[0]:
        raise StepFailed(f"{what}: wanted one line naming {want}, got {len(lines)}: {' | '.join(lines)[:300]}")
    return f"{what}: exit {done.returncode} in {took:.1f} s: {lines[0][:160]}"


def step_refusals(run: Run) -> str:
    readonly = run.tmp / "readonly-state"
    readonly.mkdir()
    results = [
        refused(run, "WORKER_MODE=bogus", want="WORKER_MODE", WORKER_MODE="bogus", STORAGE_BACKEND="local"),
        refused(
            run,
            "buffer without INTERNAL_API_KEY",
            want="INTERNAL_API_KEY",
            WORKER_MODE="buffer",
            ORCHESTRATOR_BASE_URL="http://127.0.0.1:9",
            STORAGE_BACKEND="local",
        ),  # fmt: skip
        refused(
            run,
            "read-only STATE_DIR",
            "-v",
            f"{readonly}:/var/lib/fastwan:ro",
            want="STATE_DIR",
            PIPELINE_BACKEND="tiny",
            STORAGE_BACKEND="local",
        ),  # fmt: skip
    ]
    return " || ".join(results)


def step_buffer(run: Run) -> str:
    """Stub + worker; a job completes; docker stop mid-job; no final status lost."""
    stub_data = run.volume("stub-data")
    run.run_container(
        "stub", STUB_IMAGE, "-v", f"{stub_data}:/var/lib/fastwan-stub",
        env={"INTERNAL_API_KEY": API_KEY, "STUB_HOST": "127.0.0.1", "STUB_PORT": str(run.stub_port),
             "LEASE_SECONDS": str(LEASE_S), "LEASE_CHECK_S": "0.5"},
    )  # fmt: skip
    began = time.monotonic()
    wait(lambda: _ok(f"{run.stub_url}/health"), 60, "the stub's /health")
    run.figures["stub_start_to_ready_s"] = round(time.monotonic() - began, 1)
    state = run.volume("state")
    began = time.monotonic()
    name = run.worker("buffer-1", "-v", f"{state}:/var/lib/fastwan")
    wait(lambda: "claiming jobs" in logs_tail(name, 200) or not container_state(name)["Running"], 240,
         "the worker's `claiming jobs`", interval_s=1)  # fmt: skip
    if not container_state(name)["Running"]:
        raise StepFailed(f"the worker exited: {logs_tail(name)}")
    run.figures["buffer_start_to_ready_s"] = round(time.monotonic() - began, 1)
    first = run.submit()
    view = run.wait_status(first, {"completed", "failed"}, 240, f" (worker log: {logs_tail(name)})")
    run.figures["buffer_first_job_s"] = round(time.monotonic() - began, 1)
    if view["status"] != "completed":
        raise StepFailed(f"the first job failed: {view['error']}")
    second = run.submit(PACED)
    run.wait_running(second)
    took, code = stop_and_time(name, STOP_GRACE_S)
    run.figures["buffer_stop_to_exit_s"] = round(took, 1)
    if code != 0:
        raise StepFailed(f"docker stop mid-job: exit code {code} after {took:.1f} s ({logs_tail(name)})")
    if took > STOP_GRACE_S:
        raise StepFailed(f"docker stop took {took:.1f} s, past the {STOP_GRACE_S} s grace: the engine killed it")
    after_stop = run.job(second)
    how = f"{after_stop['status']} when the container had exited"
    if after_stop["status"] != "completed":
        # Not delivered (or handed back as retryable): a new container on the same volume delivers its outbox,
        # or runs the job again; either way it must end completed.
        run.worker("buffer-2", "-v", f"{state}:/var/lib/fastwan")
        view = run.wait_status(second, {"completed", "failed"}, 240)
        if view["status"] != "completed":
            raise StepFailed(f"the job stopped mid-run ended {view['status']}: {view['error']}")
        how += f", completed by the next container (attempts {view['attempts']})"
    return (
        f"ready (claiming) {run.figures['buffer_start_to_ready_s']} s after docker run, first job completed at "
        f"{run.figures['buffer_first_job_s']} s; docker stop mid-job: "
        f"exit 0 in {took:.1f} s; that job {how}"
    )


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def step_bind_mounts(run: Run) -> str:
    """STATE_DIR and the model cache from host folders that do not exist yet (Docker creates them as root)."""
    host = run.tmp / "bind"
    state, cache = host / "state", host / "hf"
    job_id = run.submit()
    name = run.worker("bind", "-v", f"{state}:/var/lib/fastwan", "-v", f"{cache}:/models/hf")
    view = run.wait_status(job_id, {"completed", "failed"}, 240, f" (worker log: {logs_tail(name)})")
    if view["status"] != "completed":
        raise StepFailed(f"job failed: {view['error']}")
    videos = sorted((state / "outputs").rglob("*.mp4"))
    if not videos:
        raise StepFailed(f"no video under {state}/outputs on the host")
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (state, cache, videos[0])}
    if owners != {(10001, 10001)}:
        raise StepFailed(f"owners {owners}: the folders were not given to the worker user")
    run.bind_worker = name  # the kill step reuses its folders
    size = videos[0].stat().st_size
    return f"job completed; {videos[0].relative_to(host)} on the host ({size} B), folders owned by 10001"


def step_kill(run: Run) -> str:
    """docker kill -s KILL mid-job; a new container finishes the job after the lease expires."""
    host = run.tmp / "bind"
    job_id = run.submit(PACED)
    first = run.bind_worker
    view = run.wait_running(job_id)
    holder = view["worker_id"]
    docker("kill", "-s", "KILL", first)
    state = container_state(first)
    began = time.monotonic()
    second = run.worker(
        "after-kill", "-v", f"{host / 'state'}:/var/lib/fastwan", "-v", f"{host / 'hf'}:/models/hf",
        BUFFER_WORKER_ID="after-kill",
    )  # fmt: skip
    run.after_kill = second
    view = run.wait_status(job_id, {"completed", "failed"}, 240, f" (worker log: {logs_tail(second)})")
    if view["status"] != "completed":
        raise StepFailed(f"the job ended {view['status']}: {view['error']}")
    if view["worker_id"] == holder or view["attempts"] < 2:
        raise StepFailed(f"completed by {view['worker_id']} in {view['attempts']} attempts: not a new container's")
    return (
        f"killed (exit {state['ExitCode']}) while holding the job; the new container finished it "
        f"{time.monotonic() - began:.1f} s later, attempt {view['attempts']}"
    )


ZOMBIES = r"""
import json, os
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    state = stat.rsplit(")", 1)[1].split()[0]
    procs[pid] = {"state": state, "cmd": cmd[:120], "ppid": int(stat.rsplit(")", 1)[1].split()[1])}
print(json.dumps(procs))
"""


def processes(name: str) -> dict[str, dict[str, Any]]:
    return dict(json.loads(docker("exec", name, "python", "-c", ZOMBIES)))


def step_zombies(run: Run) -> str:
    """Kill the GPU process and leave an orphan: PID 1 (tini) must reap what its parent does not."""
    name = run.after_kill
    before = processes(name)
    if "tini" not in before.get("1", {}).get("cmd", ""):
        raise StepFailed(f"PID 1 is not tini: {before.get('1')}")
    children = [pid for pid, p in before.items() if "spawn_main" in p["cmd"]]  # multiprocessing's spawn
    if not children:
        raise StepFailed(f"no GPU process found among {[p['cmd'] for p in before.values()]}")
    docker("exec", name, "bash", "-c", f"kill -KILL {' '.join(children)}")
    # An orphan: the exec'd shell exits at once, its `sleep` is re-parented to PID 1 and exits 1 s later.
    docker("exec", name, "bash", "-c", "sleep 1 & exit 0")
    time.sleep(4)
    after = processes(name)
    zombies = {pid: p["cmd"] or "(defunct)" for pid, p in after.items() if p["state"] == "Z"}
    if zombies:
        raise StepFailed(f"zombies left: {zombies}")
    if not container_state(name)["Running"]:
        raise StepFailed("the worker container exited when its GPU process was killed")
    return f"killed GPU process(es) {children} and left an orphan; 4 s later no zombie among {len(after)} processes"


def step_queue(run: Run) -> str:
    port = free_port()
    began = time.monotonic()
    name = run.run_container(
        "queue", WORKER_IMAGE, f"--stop-timeout={STOP_GRACE_S}",
        # The image's HEALTHCHECK command as it is; only its schedule is quickened (interval 30 s in the image).
        "--health-interval=1s", "--health-start-period=300s",
        env={**WORKER_ENV, "WORKER_MODE": "queue", "PORT": str(port), "HOST": "127.0.0.1"},
    )  # fmt: skip
    wait(
        lambda: (
            container_state(name).get("Health", {}).get("Status") == "healthy" or not container_state(name)["Running"]
        ),
        240,
        "HEALTHCHECK healthy",
    )
    state = container_state(name)
    if state.get("Health", {}).get("Status") != "healthy":
        raise StepFailed(f"not healthy: {state.get('Health', {}).get('Status')} ({logs_tail(name)})")
    ready = time.monotonic() - began
    run.figures["queue_start_to_healthy_s"] = round(ready, 1)
    job = {"prompt": "a red fox in snow", **SMALL}
    response = httpx.post(f"http://127.0.0.1:{port}/generate", json=job, timeout=300)
    if response.status_code != 200 or response.json().get("status") != "completed":
        raise StepFailed(f"/generate answered {response.status_code}: {response.text[:200]}")
    took, code = stop_and_time(name, STOP_GRACE_S)
    run.figures["queue_stop_to_exit_s"] = round(took, 1)
    if code != 0:
        raise StepFailed(f"docker stop: exit code {code} ({logs_tail(name)})")
    return f"healthy {ready:.1f} s after docker run; /generate completed; docker stop: exit 0 in {took:.1f} s"


def main() -> int:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)
    engine = Engine()
    run = Run()
    log(f"container-test: {STUB_IMAGE} and {WORKER_IMAGE} on this machine's Docker engine")
    if not run.step("engine", engine.start):
        log(f"container-test: no Docker engine: {run.results[-1][3].removeprefix('FAILED: ')}")
        return 1
    try:
        built = run.step("base image", step_base) and run.step("build context", step_context)
        built = built and run.step(
            "build stub", lambda: build(run, STUB_IMAGE, "Dockerfile.stub")
        ) and run.step(
            "build worker",
            lambda: build(
                run, WORKER_IMAGE, "Dockerfile.fastwan", "PYTHON=python3.11", "SALAD_QUEUE_WORKER_VERSION=none",
                target="runtime",
            ),
        )  # fmt: skip
        run.step("compose file", step_compose)
        if built:
            run.step("worker image files", step_worker_files)
            run.step("stub image files", step_stub_files)
            run.step("refusals", lambda: step_refusals(run))
            run.step("buffer mode + docker stop", lambda: step_buffer(run))
            if run.step("bind mounts from missing host folders", lambda: step_bind_mounts(run)):
                if run.step("docker kill mid-job", lambda: step_kill(run)):
                    run.step("no zombies", lambda: step_zombies(run))
            run.step("queue mode", lambda: step_queue(run))
    finally:
        run.cleanup()
        engine.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"figures": run.figures, "steps": run.results}, indent=2) + "\n")
    passed = sum(1 for r in run.results if r[1])
    failed = len(run.results) - passed
    for name, ok, _, summary in run.results:
        if not ok:
            log(f"  FAILED {name}: {summary.removeprefix('FAILED: ')}")
    log(f"container-test: {passed} passed, {failed} failed in {time.monotonic() - run.start:.0f} s")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
