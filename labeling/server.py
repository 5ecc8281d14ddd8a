"""A local Label Studio managed by the project: its own venv, a data dir under the state dir, one PID.

Label Studio pins Django, numpy, pyarrow, openai ... so it lives in `.venv-labelstudio` and we speak to it
over HTTP only. Everything is configured through environment variables at start (Label Studio reads
`LABEL_STUDIO_X`, then `X`); the admin user and its API token are created non-interactively on first start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from labeling.exceptions import (
    LabelStudioInstallError,
    LabelStudioNotInstalledError,
    LabelStudioStartError,
)
from labeling.settings import LabelStudioSettings

# Label Studio's default SSRF block list (core/utils/io.py, 1.23) minus the loopback ranges, so that
# webhooks may reach our own server on 127.0.0.1 while every other reserved range stays banned.
BANNED_SUBNETS_EXCEPT_LOOPBACK = (
    "0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.0.0.0/24,192.0.2.0/24,"
    "192.88.99.0/24,192.168.0.0/16,198.18.0.0/15,198.51.100.0/24,203.0.113.0/24,224.0.0.0/4,"
    "233.252.0.0/24,240.0.0.0/4,255.255.255.255/32,::/128,::ffff:0:0/96,::ffff:0:0:0/96,64:ff9b::/96,"
    "64:ff9b:1::/48,100::/64,2001:0000::/32,2001:20::/28,2001:db8::/32,2002::/16,fc00::/7,fe80::/10,ff00::/8"
)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class ServerStatus:
    url: str
    pid: int | None
    running: bool  # the recorded PID is alive and is a Label Studio process
    healthy: bool  # /health answered UP
    data_dir: Path
    log_file: Path


class LabelStudioServer:
    """Install, start, stop and inspect the project's own Label Studio."""

    def __init__(self, settings: LabelStudioSettings, state_dir: Path, *, python: str | None = None) -> None:
        self.settings = settings
        self.venv = settings.venv.resolve()
        self.data_dir = (state_dir / "labelstudio").resolve()
        self.pid_file = self.data_dir / "labelstudio.pid"
        self.log_file = self.data_dir / "labelstudio.log"
        self.url = f"http://{settings.host}:{settings.port}"
        self._python = python or sys.executable

    # ----------------------------------------------------------------- install
    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    def installed_version(self) -> str | None:
        python = self.venv / "bin" / "python"
        if not (python.is_file() and self.executable.is_file()):
            return None
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
            capture_output=True,
            text=True,
            check=False,
        )
        return probe.stdout.strip() or None if probe.returncode == 0 else None

    def install(self, progress: Progress = _quiet) -> bool:
        """Create the venv and install the pinned Label Studio; False when it was already there."""
        if self.installed_version() == self.settings.version:
            return False
        python = self.venv / "bin" / "python"
        if not python.is_file():
            progress(f"creating {self.venv}")
            self._run([self._python, "-m", "venv", str(self.venv)], "create the venv")
        progress(f"installing label-studio=={self.settings.version} (about 2 minutes, ~1 GB)")
        self._run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"label-studio=={self.settings.version}",
                f"label-studio-sdk=={self.settings.sdk_version}",
            ],
            "pip install label-studio",
        )
        if self.installed_version() != self.settings.version:
            raise LabelStudioInstallError(
                f"label-studio {self.settings.version} is still missing from {self.venv} after pip install"
            )
        return True

    @staticmethod
    def _run(cmd: list[str], what: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise LabelStudioInstallError(f"{what} failed (exit {done.returncode}): " + " | ".join(tail))

    # ------------------------------------------------------------ start / stop
    def environment(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_USERNAME": s.username,
                "LABEL_STUDIO_PASSWORD": s.password.get_secret_value(),
                "LABEL_STUDIO_USER_TOKEN": s.token.get_secret_value(),
                # Stored in the organization at FIRST start; later starts cannot turn it on.
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "USE_DEFAULT_BANNED_SUBNETS": "false",
                "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS_EXCEPT_LOOPBACK,
                "WEBHOOK_TIMEOUT": str(s.webhook_timeout_s),
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "DEBUG": "false",
                "LOG_LEVEL": "WARNING",
            }
        )
        return env

    def start(self, progress: Progress = _quiet) -> ServerStatus:
        """Start (or find already running) and wait until healthy; raises `LabelStudioStartError`."""
        if self.settings.url:
            raise LabelStudioStartError(
                f"labelstudio.url is set ({self.settings.url}): that server is external, not started by hitl"
            )
        current = self.status()
        if current.running:
            if not current.healthy:
                self.wait_healthy(current.pid)
            return self.status()
        if self.installed_version() is None:
            raise LabelStudioNotInstalledError(
                f"Label Studio is not installed in {self.venv}: run `hitl labelstudio install`"
            )
        if _port_in_use(self.settings.host, self.settings.port):
            raise LabelStudioStartError(
                f"port {self.settings.port} on {self.settings.host} is already in use by another process"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        first = not (self.data_dir / "label_studio.sqlite3").exists()
        progress("first start: creating the database (about 1 minute)" if first else "starting")
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    str(self.executable),
                    "start",
                    "--no-browser",
                    "--internal-host",
                    self.settings.host,
                    "--port",
                    str(self.settings.port),
                ],
                env=self.environment(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self.wait_healthy(proc.pid, proc=proc)
        except LabelStudioStartError:
            self.stop()
            raise
        return self.status()

    def wait_healthy(self, pid: int | None, *, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LabelStudioStartError(
                    f"Label Studio exited with code {proc.returncode} while starting on port "
                    f"{self.settings.port}; last lines of {self.log_file}:\n{self.log_tail()}"
                )
            if pid is not None and proc is None and not _alive(pid):
                raise LabelStudioStartError(
                    f"Label Studio (PID {pid}) exited while starting; see {self.log_file}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        raise LabelStudioStartError(
            f"Label Studio (PID {pid}) was not healthy on port {self.settings.port} after "
            f"{self.settings.start_timeout_s:.0f} s; see {self.log_file}"
        )

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            answer = httpx.get(f"{self.url}/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and '"UP"' in answer.text

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> ServerStatus:
        pid = self.recorded_pid()
        running = pid is not None and _alive(pid) and _is_label_studio(pid)
        return ServerStatus(
            url=self.url,
            pid=pid if running else None,
            running=running,
            healthy=self.healthy() if running else False,
            data_dir=self.data_dir,
            log_file=self.log_file,
        )

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the recorded PID only (then SIGKILL after `timeout`); False when nothing was running."""
        pid = self.recorded_pid()
        if pid is None or not _alive(pid) or not _is_label_studio(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_label_studio(pid: int) -> bool:
    """Guard against a recycled PID: on Linux, check the command line; elsewhere trust the PID file."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True
    try:
        return b"label-studio" in cmdline.read_bytes() or b"label_studio" in cmdline.read_bytes()
    except OSError:
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
