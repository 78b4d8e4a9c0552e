"""ComfyUI's server, headless, as a child process for the tests, driven over HTTP.

The child runs a small launcher (written into the server's temp folder) that imports transformers and diffusers,
registers the torchvision stand-in (see ``comfy_env``), then runs ComfyUI's ``main.py``. Everything it writes goes to
its temp base directory (``--base-directory``: models, custom nodes, output, temp, input, user); bytecode caches go
there too, so the read-only sources stay untouched. Its ``custom_nodes`` folder holds links to ADE and
ComfyUI-IVMixed; the tiny models' folders come in through ``--extra-model-paths-config``. The child runs in its own
process group, killed on :meth:`ComfyServer.stop` (also when a test fails), when its memory passes
``memory_limit_gb``, and when the test process dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Optional

from .comfy_env import comfyui_root, make_base_directory, model_folders

HERE = Path(__file__).resolve().parent
# The launcher loads comfy_env from its file: putting this folder on sys.path would let its server.py shadow ComfyUI's.
LAUNCHER = """\
import importlib.util, runpy, sys
spec = importlib.util.spec_from_file_location("ivmixed_tests_comfy_env", {env!r})
comfy_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(comfy_env)
comfy_env.install_torchvision_stand_in()  # after transformers and diffusers are imported (see comfy_env)
root = {root!r}
sys.path.insert(0, root)
sys.argv = [root + "/main.py"] + sys.argv[1:]
runpy.run_path(root + "/main.py", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(AssertionError):
    pass


def _die_with_parent() -> None:
    """In the child, before ComfyUI starts (Linux): killed when the process that started it dies, even by a signal
    that runs no clean-up, so that no server outlives its tests."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ComfyServer:
    """``with ComfyServer(folder, models=root) as server:`` starts ComfyUI, waits until it answers, stops it after.

    ``settings``: the web page's user settings. ``run(prompt)`` queues an API-format prompt and returns its
    history entry once done (raising with ComfyUI's node errors, or the execution error, in the message)."""

    def __init__(self, folder, models: Optional[Path] = None, pack: bool = True, port: Optional[int] = None,
                 memory_limit_gb: float = 16.0, extra_args=(), settings: Optional[Dict] = None):
        self.folder = Path(folder)
        self.base = make_base_directory(self.folder / "base", pack=pack)
        self.models = Path(models) if models is not None else None
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.memory_limit = memory_limit_gb * 2**30
        self.extra_args = list(extra_args)
        if settings:  # the page's user settings (the default user's comfy.settings.json)
            user = self.base / "user" / "default"
            user.mkdir(parents=True, exist_ok=True)
            (user / "comfy.settings.json").write_text(json.dumps(settings, indent=1))
        self.log_path = self.folder / "server.log"
        self.process: Optional[subprocess.Popen] = None
        self.peak_rss = 0
        self.killed_for_memory = False
        self.client_id = uuid.uuid4().hex
        self._watch: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # --- life cycle ------------------------------------------------------------------------------------------------
    def _extra_paths_config(self) -> Path:
        path = self.folder / "extra_model_paths.yaml"
        lines = ["ivmixed_tests:"]
        if self.models is not None:
            for name, folder in model_folders(self.models).items():
                lines.append(f"  {name}: {json.dumps(str(folder))}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self):
        launcher = self.folder / "launch_comfyui.py"
        launcher.write_text(LAUNCHER.format(env=str(HERE / "comfy_env.py"), root=str(comfyui_root())))
        return [sys.executable, str(launcher), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base), "--extra-model-paths-config", str(self._extra_paths_config()),
                "--output-directory", str(self.base / "output"), "--temp-directory", str(self.base / "temp"),
                "--input-directory", str(self.base / "input"), "--user-directory", str(self.base / "user"),
                "--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--disable-api-nodes",
                "--preview-method", "none", *self.extra_args]

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(self.folder / "pycache"), HF_HUB_OFFLINE="1",
                   PYTHONUNBUFFERED="1", DO_NOT_TRACK="1")
        log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command(), cwd=str(self.folder), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        log.close()
        self._watch = threading.Thread(target=self._watch_memory, daemon=True)
        self._watch.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - self.started
        return self

    def _rss(self) -> int:
        import psutil

        try:
            process = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        except psutil.Error:
            return 0

    def _watch_memory(self) -> None:
        while not self._stopping.is_set() and self.process.poll() is None:
            rss = self._rss()
            self.peak_rss = max(self.peak_rss, rss)
            if rss > self.memory_limit:
                self.killed_for_memory = True
                self._kill()
                return
            self._stopping.wait(0.2)

    def _kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.process is None:
            return
        self._stopping.set()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self._kill()
        self._kill()  # anything left in its group
        self.process.wait(timeout=15)
        if self._watch is not None:
            self._watch.join(timeout=5)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            why = (f"used more than {self.memory_limit / 2**30:.0f} GiB and was killed" if self.killed_for_memory
                   else f"exited with {self.process.returncode}")
            raise ServerError(f"ComfyUI's server {why}; its log ends:\n{self.log_tail()}")

    def wait_ready(self, timeout: float) -> Dict:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                stats = self.get("/system_stats", timeout=5)
                if str(self.base) not in stats.get("system", {}).get("argv", []):
                    raise ServerError(f"another server answers on port {self.port}: {stats.get('system')}")
                return stats
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise ServerError(f"ComfyUI did not answer /system_stats in {timeout:.0f} s; its log ends:\n"
                                      f"{self.log_tail()}")
                time.sleep(0.25)

    # --- HTTP ------------------------------------------------------------------------------------------------------
    def _request(self, path: str, data: Optional[bytes] = None, timeout: float = 30.0):
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"} if data is not None else {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get(self, path: str, timeout: float = 30.0):
        return json.loads(self._request(path, timeout=timeout))

    def post(self, path: str, body, timeout: float = 30.0):
        return json.loads(self._request(path, json.dumps(body).encode(), timeout=timeout))

    def file(self, entry: Dict) -> bytes:
        """The bytes of one output file as the history lists it (``filename``, ``subfolder``, ``type``)."""
        query = urllib.parse.urlencode({k: entry.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}", timeout=60)

    def node_types(self) -> Dict:
        return self.get("/object_info", timeout=60)

    def queue(self, prompt: Dict) -> str:
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id}, timeout=120)
        except urllib.error.HTTPError as error:  # 400: the prompt did not validate
            body = error.read().decode(errors="replace")
            try:
                detail = json.loads(body)
                body = json.dumps({"error": detail.get("error"), "node_errors": detail.get("node_errors")}, indent=1)
            except ValueError:
                pass
            raise ServerError(f"ComfyUI refused the prompt ({error.code}):\n{body}") from None
        if answer.get("node_errors"):
            raise ServerError(f"ComfyUI reported node errors: {json.dumps(answer['node_errors'], indent=1)}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> Dict:
        """The prompt's history entry once it has finished (raises on an execution error or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                entry = self.get(f"/history/{prompt_id}", timeout=60).get(prompt_id)
            except (TimeoutError, urllib.error.URLError):  # the server is busy (a long call holding the GIL)
                entry = None
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") == "error":
                if status.get("status_str") != "success":
                    errors = [m[1] for m in status.get("messages", []) if m[0] in ("execution_error",
                                                                                     "execution_interrupted")]
                    detail = "\n".join(
                        f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type')}: "
                        f"{e.get('exception_message')}\n{''.join(e.get('traceback', []))[-3000:]}" for e in errors)
                    raise ServerError(f"the prompt failed ({status.get('status_str')}):\n{detail or status}")
                return entry
            elif time.monotonic() > deadline:
                raise ServerError(f"the prompt did not finish in {timeout:.0f} s; the server's log ends:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.25)

    def run(self, prompt: Dict, timeout: float = 600.0) -> Dict:
        return self.wait(self.queue(prompt), timeout)


