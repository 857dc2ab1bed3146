"""Stand-ins for the executables that cannot run here (no GPU, no vLLM, no Nsight Systems, no
Podman-HPC): `vllm serve`, `nsys` and `podman-hpc`, installed onto PATH by `install`.

- vllm: `vllm serve MODEL ...` prints the log lines artifact.vllm_provenance reads (version
  from $FAKE_VLLM_VERSION, parallel ranks, all2all manager, MoE config, "EPLB is enabled"
  where the build has EPLB for Mixtral, unless $FAKE_EPLB_OFF), serves /health, /v1/models
  and /v1/completions (streamed or not) with usage, and captures routing like the plugin:
  while the control file names a path, every request's tokens (prompt: its words; output:
  max_tokens) are written to one data-parallel rank's log, top-2 experts per token, so each
  layer's counts sum to 2 x the processed tokens. $FAKE_DIE makes it die at start-up.
- nsys: `nsys profile ... --output R vllm ...` runs the server and, after it exits (SIGTERM
  is forwarded), writes the "report" R: a kernel summary CSV in nsys's plain form, the
  fused_moe and NCCL times scaled by $FAKE_KERNEL_SCALE; `nsys stats --report NAME --format
  csv --sqlite S --output P R` writes `P_NAME.csv` from it (with $FAKE_NSYS_OLD only the old
  report name `gpukernsum` exists); `nsys --version`. Every call is appended to
  $FAKE_NSYS_CALLS when set.
- podman-hpc: image inspect / build (as containers/build.sh calls it) / pull / tag /
  migrate / rm / run; images live in $FAKE_PODMAN_STATE (a JSON list), every argv is appended
  to $FAKE_PODMAN_CALLS; `run ... python -c <snapshot_download> HUB_ID` needs HF_TOKEN in its
  environment and writes a snapshot into $HF_HOME.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SNAPSHOT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
SAFETENSORS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def install(bin_dir: Path, name: str) -> Path:
    """Put the stand-in `name` (vllm, nsys, podman-hpc) onto `bin_dir`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / name
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]\n"
        "import standins\n"
        f"sys.exit(standins.MAIN[{name!r}](sys.argv[1:]))\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _record(env: str, argv: list[str]) -> None:
    if os.environ.get(env):
        with open(os.environ[env], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(argv) + "\n")


# --- the Hugging Face cache ----------------------------------------------------------------


def write_hf_snapshot(hf_home: Path, hub_id: str) -> Path:
    """A complete (tiny) cached snapshot of `hub_id` in the hub cache layout."""
    repo = Path(hf_home) / "hub" / f"models--{hub_id.replace('/', '--')}"
    folder = repo / "snapshots" / SNAPSHOT_COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT_COMMIT)
    (folder / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    weight_map = {f"layer{i}": name for i, name in enumerate(SAFETENSORS)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for i, name in enumerate(SAFETENSORS):
        (folder / name).write_bytes(b"\0" * (100 + i))
    return folder


# --- podman-hpc ----------------------------------------------------------------------------


def _images() -> list[str]:
    path = Path(os.environ["FAKE_PODMAN_STATE"])
    return json.loads(path.read_text()) if path.exists() else []


def _add_image(tag: str) -> None:
    Path(os.environ["FAKE_PODMAN_STATE"]).write_text(json.dumps([*_images(), tag]))


def podman_hpc(argv: list[str]) -> int:
    _record("FAKE_PODMAN_CALLS", argv)
    if argv[:2] == ["image", "inspect"]:
        tag = argv[-1]
        if tag not in _images():
            print(f"Error: {tag}: image not known", file=sys.stderr)
            return 125
        field = argv[argv.index("--format") + 1]
        print({"{{.Id}}": "f00d", "{{.Digest}}": f"sha256:{tag.encode().hex()}"}.get(field, "4096"))
        return 0
    if argv[0] == "build":
        _add_image(argv[argv.index("-t") + 1])
        return 0
    if argv[0] == "pull":
        _add_image(argv[1])
        return 0
    if argv[0] == "tag":
        _add_image(argv[2])
        return 0
    if argv[0] in ("migrate", "rm"):
        return 0
    if argv[0] == "run":
        if argv[-2:] == ["cat", "/opt/moe-artifact/image-info.json"]:
            print(json.dumps({"variant": "gpu", "packages": {"vllm": "fake"}, "nsys": "fake"}))
            return 0
        if "python" in argv:
            if not os.environ.get("HF_TOKEN"):
                print("401: gated repository", file=sys.stderr)
                return 1
            home = next(a.split("=", 1)[1] for a in argv if a.startswith("HF_HOME="))
            print(write_hf_snapshot(Path(home), argv[-1]))
            return 0
    print(f"podman-hpc stand-in: unexpected {argv}", file=sys.stderr)
    return 2


# --- nsys ----------------------------------------------------------------------------------

PLAIN_HEADER = (
    "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Name"
)
# name, total ms, instances, whether $FAKE_KERNEL_SCALE scales it
KERNELS = (
    ("fused_moe_kernel", 1000.0, 2000, True),
    ("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<(unsigned long)4096>)", 400.0, 500, True),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096>)", 50.0, 100, True),
    (
        '"void vllm::moe::moe_align_block_size_kernel<int>(const T1 *, int *, int)"',
        30.0,
        2000,
        False,
    ),
    (
        '"void flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128>>(flash::P)"',
        200.0,
        4000,
        False,
    ),
)


def kernel_csv(scale: float) -> str:
    rows = [(n, t * (scale if scaled else 1.0), k) for n, t, k, scaled in KERNELS]
    grand = sum(t for _, t, _ in rows)
    lines = [PLAIN_HEADER]
    for name, total_ms, count in rows:
        total = total_ms * 1e6
        avg = total / count
        lines.append(
            f"{100 * total_ms / grand:.1f},{total:.0f},{count},{avg:.1f},{avg:.1f},"
            f"{avg / 2:.1f},{avg * 3:.1f},{avg / 10:.1f},{name}"
        )
    return "\n".join(lines) + "\n"


def nsys(argv: list[str]) -> int:
    _record("FAKE_NSYS_CALLS", argv)
    if argv == ["--version"]:
        print("NVIDIA Nsight Systems version 2024.5.1.113-245134619542v0")
        return 0
    if argv[0] == "profile":
        report = Path(argv[argv.index("--output") + 1])
        child = subprocess.Popen(argv[argv.index("vllm") :])
        # nsys stops the application and then writes its report.
        signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
        code = child.wait()
        report.write_text(kernel_csv(float(os.environ.get("FAKE_KERNEL_SCALE", "1"))))
        return code
    if argv[0] == "stats":
        name = argv[argv.index("--report") + 1]
        if os.environ.get("FAKE_NSYS_OLD") and name != "gpukernsum":
            print(f"ERROR: Report '{name}' could not be found.", file=sys.stderr)
            return 1
        Path(argv[argv.index("--sqlite") + 1]).write_text("sqlite export")
        prefix = argv[argv.index("--output") + 1]
        Path(f"{prefix}_{name}.csv").write_text(Path(argv[-1]).read_text())
        return 0
    print(f"nsys stand-in: unexpected {argv}", file=sys.stderr)
    return 2


# --- vllm serve ----------------------------------------------------------------------------


class _Capture:
    """The routing plugin's part: per-rank logs while the control file names a path."""

    def __init__(self, control: Path, dp: int):
        self.control, self.dp = control, dp
        self.lock = threading.Lock()
        self.writers: list = []
        self.steps: list[int] = []
        self.requests = 0

    def poll(self) -> None:
        from artifact.routing import RoutingHeader, RoutingWriter

        seen = None
        while True:
            time.sleep(0.05)
            try:
                control = json.loads(self.control.read_text())
            except (OSError, ValueError):
                continue
            if control.get("serial") == seen:
                continue
            seen = control.get("serial")
            with self.lock:
                for writer, steps in zip(self.writers, self.steps, strict=True):
                    writer.close()
                    Path(f"{writer.path}.done").write_text(json.dumps({"steps": steps}))
                self.writers, self.steps = [], []
                if control.get("path"):
                    for r in range(self.dp):
                        header = RoutingHeader(
                            num_experts=8,
                            top_k=2,
                            num_layers=2,
                            rank=r,
                            world_size=self.dp,
                            layer_names=("l0", "l1"),
                            expert_map=(2 * r, 2 * r + 1),
                            meta=control.get("meta"),
                        )
                        self.writers.append(RoutingWriter(f"{control['path']}.rank{r}", header))
                        self.steps.append(0)

    def request(self, prompt_tokens: int, output_tokens: int) -> None:
        """Routing of one request: its prompt in one pass, each fed-back token in one more."""
        import numpy as np

        from artifact.routing import PHASE_CODE

        with self.lock:
            n = self.requests
            self.requests += 1
            if not self.writers:
                return
            rank = n % self.dp
            passes = [("prefill", range(prompt_tokens))]
            passes += [("decode", [prompt_tokens + i]) for i in range(output_tokens - 1)]
            for phase, positions in passes:
                counts = np.zeros(8, dtype=np.int32)
                for j in positions:
                    counts[(n + j) % 8] += 1
                    counts[(n + j + 3) % 8] += 1
                step = self.steps[rank]
                self.writers[rank].write_step(
                    [(step, layer, PHASE_CODE[phase], len(positions), counts) for layer in (0, 1)]
                )
                self.steps[rank] += 1


def vllm(argv: list[str]) -> int:
    assert argv[0] == "serve", argv

    def opt(name: str, default=None):
        return argv[argv.index(name) + 1] if name in argv else default

    def say(line: str) -> None:
        print(line, flush=True)

    model = argv[1]
    tp, dp = int(opt("--tensor-parallel-size", 1)), int(opt("--data-parallel-size", 1))
    ep = "--enable-expert-parallel" in argv
    version = os.environ.get("FAKE_VLLM_VERSION", "0.10.1rc2.dev263+g2f13319f4")
    at_0110 = version.startswith("0.11")
    args = {
        "model": model,
        "host": opt("--host"),
        "max_model_len": int(opt("--max-model-len")),
        "enforce_eager": True,
        "tensor_parallel_size": tp,
        "data_parallel_size": dp,
        "enable_expert_parallel": ep,
        "enable_eplb": "--enable-eplb" in argv,
        "max_num_seqs": int(opt("--max-num-seqs")),
        "max_num_batched_tokens": int(opt("--max-num-batched-tokens")),
    }
    args = {k: v for k, v in args.items() if v is True or (v is not False and v != 1)}
    say(
        f"(APIServer pid=1) INFO 01-01 00:00:00 [api_server.py:1] vLLM API server version {version}"
    )
    say(f"(APIServer pid=1) INFO 01-01 00:00:00 [utils.py:1] non-default args: {args!r}")
    manager = os.environ.get("FAKE_MANAGER", "AllGather-ReduceScatter" if at_0110 else "naive")
    for r in range(tp * dp):
        d, t = (r, 0) if dp > 1 else (0, r)
        worker = f"(Worker pid={10 + r}) INFO 01-01 00:00:01"
        say(
            f"{worker} [parallel_state.py:1] rank {r} in world size {tp * dp} is assigned as "
            f"DP rank {d}, PP rank 0, TP rank {t}, EP rank {r}"
        )
        if ep and dp > 1:
            say(f"{worker} [cuda_communicator.py:1] Using {manager} all2all manager.")
        e, n = (2, 14336) if ep else (8, 3584)
        say(
            f"{worker} [fused_moe.py:1] Using configuration from "
            f"/v/E={e},N={n},device_name=NVIDIA_A100-SXM4-40GB.json for MoE layer."
        )
    # Mixtral has EPLB only from 0.11.0; $FAKE_EPLB_OFF: a build that ignores --enable-eplb.
    if "--enable-eplb" in argv and at_0110 and not os.environ.get("FAKE_EPLB_OFF"):
        say(f"(EngineCore_0 pid=2) INFO 01-01 00:00:02 [x.py:1] EPLB is enabled for model {model}.")
    if os.environ.get("FAKE_DIE"):
        say("(APIServer pid=1) ERROR 01-01 00:00:02 [core.py:1] CUDA out of memory (fake)")
        return 3
    capture = _Capture(Path(os.environ["MOE_ARTIFACT_ROUTING_CONTROL"]), dp)
    threading.Thread(target=capture.poll, daemon=True).start()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _json(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                return self._json({"object": "list", "data": [{"id": model, "object": "model"}]})
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            prompt_tokens = max(len(body["prompt"].split()), 1)
            output_tokens = int(body.get("max_tokens") or 16)
            capture.request(prompt_tokens, output_tokens)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            }
            if not body.get("stream"):
                choice = {"index": 0, "text": " tok" * output_tokens, "finish_reason": "length"}
                return self._json({"choices": [choice], "usage": usage})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def event(obj) -> None:
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            for i in range(output_tokens):
                last = i == output_tokens - 1
                choice = {"index": 0, "text": " tok", "finish_reason": "length" if last else None}
                event({"id": "c", "object": "text_completion", "choices": [choice]})
                time.sleep(0.001)
            if (body.get("stream_options") or {}).get("include_usage"):
                event({"id": "c", "object": "text_completion", "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args):
            say(f'(APIServer pid=1) INFO:     - "{self.command} {self.path} HTTP/1.1" 200')

    server = http.server.ThreadingHTTPServer((opt("--host"), int(opt("--port"))), Handler)

    def stop(*_):
        say("(APIServer pid=1) INFO 01-01 00:00:09 [launcher.py:1] Shutting down FastAPI server.")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    time.sleep(0.3)
    say(
        f"(APIServer pid=1) INFO 01-01 00:00:03 [api_server.py:1] Starting vLLM API server 0 on "
        f"http://{opt('--host')}:{opt('--port')}"
    )
    say("(APIServer pid=1) INFO:     Application startup complete.")
    server.serve_forever()
    return 0


MAIN = {"vllm": vllm, "nsys": nsys, "podman-hpc": podman_hpc}
