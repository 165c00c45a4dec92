"""Start `alpaca serve` on a free loopback port for a check script, and stop it after.

    with AlpacaServer(model, api_key="k") as srv:
        srv.base_url  # http://127.0.0.1:PORT
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = ROOT / "target" / "release" / "alpaca"
DEFAULT_MODEL = Path.home() / ".cache/alpaca/models/SmolLM2-135M-Instruct.Q4_1.gguf"


class AlpacaServer:
    def __init__(self, model=DEFAULT_MODEL, binary=DEFAULT_BIN, api_key=None, extra=()):
        self.cmd = [str(binary), "serve", "-m", str(model), "--port", "0", *extra]
        if api_key:
            self.cmd += ["--api-key", api_key]
        self.proc = None
        self.base_url = None
        self.lines = []
        self.returncode = None

    def __enter__(self):
        env = dict(os.environ)
        env.pop("ALPACA_API_KEY", None)
        self.proc = subprocess.Popen(
            self.cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited: {self.proc.wait()}")
            self.lines.append(line.rstrip())
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.base_url = m.group(1)
                break
        else:
            raise RuntimeError("server did not start")
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.returncode = self.proc.wait()
        return False
