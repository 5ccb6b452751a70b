"""The cluster launch scripts, run as written against fake `gcloud` / `sbatch` / `srun` executables.

The fakes (written into tmp, first on PATH) record their arguments and run the workers as local processes:
- `gcloud compute tpus tpu-vm` keeps one home folder per TPU worker; `scp` copies into them, `ssh` runs the
  command there with a clean environment (no index for pip) and, per worker, a GCE metadata server that
  answers `agent-worker-number` and `worker-network-endpoints` as a TPU VM's does. Each worker's venv is
  made beforehand with the suite's dependencies and no xlplastic (a TPU VM image with jax on it), so the
  run imports the wheel the launch built and copied.
- `sbatch` runs the job script from a spool copy with a job's environment (`SLURM_JOB_ID`,
  `SLURM_JOB_NODELIST` = 127.0.0.[1-2], ...); `srun` starts one task per `SLURM_NTASKS` with
  `SLURM_PROCID` / `SLURM_STEP_NODELIST` / `SLURM_STEP_NUM_TASKS`.
The scripts themselves derive each process's coordinator / process count / id from that environment; the
two-process runs of configs/tiny.yaml must agree with the one-process run. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli_helpers import QUIET, REPO, TINY, cached_run, cli_env, free_port, losses, train_rows

LAUNCH = REPO / "launch"
STEPS = 30  # configs/tiny.yaml as is (the reference run is shared with test_distributed and test_errors)
TIMEOUT = 240

FAKE_GCLOUD = r'''
import json, os, shutil, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"prog": "gcloud", "args": args}) + "\n")
root, n = os.environ["FAKE_TPU_ROOT"], int(os.environ["FAKE_TPU_WORKERS"])
if args[:3] != ["compute", "tpus", "tpu-vm"] or len(args) < 5:
    sys.exit(f"fake gcloud: unsupported command {args}")
verb, rest = args[3], args[4:]
opts, pos = {}, []
i = 0
while i < len(rest):
    a = rest[i]
    if a.startswith("--") and "=" in a:
        k, v = a[2:].split("=", 1); opts[k] = v
    elif a.startswith("--"):
        opts[a[2:]] = rest[i + 1]; i += 1
    else:
        pos.append(a)
    i += 1
assert opts.get("zone"), "fake gcloud: no --zone"
home = lambda w: os.path.join(root, f"worker-{w}")
which = lambda: range(n) if opts.get("worker", "0") == "all" else [int(opts["worker"])]
if verb == "describe":
    assert pos == [os.environ["FAKE_TPU_NAME"]], pos
    print(";".join(["127.0.0.1"] * n))
elif verb == "scp":
    *srcs, dest = pos
    name, path = dest.split(":", 1)
    assert name == os.environ["FAKE_TPU_NAME"], name
    for w in which():
        for s in srcs:
            shutil.copy(s, os.path.join(home(w), path))
elif verb == "ssh":
    assert pos == [os.environ["FAKE_TPU_NAME"]], pos

    def server(w):
        attrs = {"agent-worker-number": str(w),
                 "worker-network-endpoints": ",".join(f"unknown:unknown:127.0.0.1" for _ in range(n))}

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                key = self.path.rsplit("/", 1)[-1]
                ok = self.path.startswith("/computeMetadata/v1/instance/attributes/") and key in attrs
                if self.headers.get("Metadata-Flavor") != "Google":
                    self.send_response(403); self.end_headers(); return
                self.send_response(200 if ok else 404); self.end_headers()
                if ok:
                    self.wfile.write(attrs[key].encode())

            def log_message(self, *a):
                pass

        s = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        return s

    procs = []
    for w in which():
        md = server(w)
        env = {"HOME": home(w), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PIP_NO_INDEX": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "GCE_METADATA_IP": f"127.0.0.1:{md.server_address[1]}"}
        procs.append(subprocess.Popen(["bash", "-c", opts["command"]], cwd=home(w), env=env))
    deadline = time.monotonic() + float(os.environ.get("FAKE_TIMEOUT", "200"))
    rc = 0
    for p in procs:
        try:
            rc = max(rc, p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            sys.exit("fake gcloud ssh: timed out")
    sys.exit(rc)
else:
    sys.exit(f"fake gcloud: unsupported verb {verb}")
'''

FAKE_SBATCH = r'''
import json, os, random, re, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"prog": "sbatch", "args": args}) + "\n")
nodes = 1
while args and args[0].startswith("-"):
    a = args.pop(0)
    if a.startswith("--nodes="):
        nodes = int(a.split("=", 1)[1])
    elif a in ("-N", "--nodes"):
        nodes = int(args.pop(0))
    else:
        sys.exit(f"fake sbatch: unsupported option {a}")
script, *script_args = args
text = open(script).read()
m = re.search(r"^#SBATCH --ntasks-per-node=(\d+)", text, re.M)
per_node = int(m.group(1)) if m else 1
job = os.environ.get("FAKE_JOB_ID") or str(random.randint(1000, 99999))
spool = os.path.join(os.environ["FAKE_SPOOL"], f"job{job}")
os.makedirs(spool, exist_ok=True)
shutil.copy(script, os.path.join(spool, "slurm_script"))  # sbatch runs a copy, not the file in the checkout
env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOBID=job, SLURM_JOB_NAME="xlplastic", SLURM_NNODES=str(nodes),
           SLURM_JOB_NUM_NODES=str(nodes), SLURM_JOB_NODELIST=f"127.0.0.[1-{nodes}]" if nodes > 1 else "127.0.0.1",
           SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node), SLURM_SUBMIT_DIR=os.getcwd(),
           SLURM_NODEID="0", SLURM_PROCID="0")
print(f"Submitted batch job {job}", flush=True)
p = subprocess.run(["bash", os.path.join(spool, "slurm_script"), *script_args], env=env,
                   timeout=float(os.environ.get("FAKE_TIMEOUT", "200")))
sys.exit(p.returncode)
'''

FAKE_SRUN = r'''
import json, os, subprocess, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"prog": "srun", "args": args}) + "\n")
kill_on_bad_exit = False
while args and args[0].startswith("-"):
    a = args.pop(0)
    if a in ("--kill-on-bad-exit=1", "-K", "--kill-on-bad-exit"):
        kill_on_bad_exit = True
    else:
        sys.exit(f"fake srun: unsupported option {a}")
n = int(os.environ["SLURM_NTASKS"])
nodes = int(os.environ["SLURM_NNODES"])
procs = []
for rank in range(n):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % (n // nodes)),
               SLURM_NODEID=str(rank // (n // nodes)), SLURM_STEP_ID="0",
               SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"], SLURM_STEP_NUM_TASKS=str(n),
               SLURM_STEP_NUM_NODES=str(nodes))
    procs.append(subprocess.Popen(args, env=env))
deadline = time.monotonic() + float(os.environ.get("FAKE_TIMEOUT", "200"))
rc = 0
while any(p.poll() is None for p in procs):
    bad = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if time.monotonic() > deadline or (bad and kill_on_bad_exit):
        for p in procs:
            if p.poll() is None:
                p.kill()
        if not bad:
            sys.exit("fake srun: timed out")
    time.sleep(0.05)
sys.exit(max((p.returncode for p in procs), key=abs))
'''


def _fakes(tmp_path: Path) -> dict[str, str]:
    """Writes the fake executables; returns the environment entries that put them first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("gcloud", FAKE_GCLOUD), ("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        p = bin_dir / name
        p.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
        p.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_CALLS": str(tmp_path / "calls.jsonl"),
            "FAKE_SPOOL": str(tmp_path / "spool"), "FAKE_TIMEOUT": str(TIMEOUT - 20)}


def _calls(tmp_path: Path) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _worker_venv(home: Path, deps: Path) -> None:
    """A worker's venv with the suite's dependencies (through a site folder of links) but no xlplastic."""
    venv = home / "xlplastic-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    (site,) = venv.glob("lib/python*/site-packages")
    (site / "deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n", encoding="utf-8")


def _deps_without_xlplastic(tmp_path: Path) -> Path:
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in sys.path:
        d = Path(entry)
        if not d.is_dir() or d.name not in ("site-packages", "dist-packages") or d.resolve() == REPO:
            continue
        for item in d.iterdir():
            name = item.name.lower()
            if name.startswith(("xlplastic", "__editable__", "_xlplastic")) or (deps / item.name).exists():
                continue
            (deps / item.name).symlink_to(item)
    return deps


def _rel_close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * max(abs(x), abs(y)) for x, y in zip(a, b))


def _sh(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


# --- the fake clusters: both launches at once (their start-up, not their steps, dominates the time) ---------

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    env = cli_env(tmp_path_factory)
    cache_env = [f"{k}={v}" for k, v in env.items() if k.startswith("JAX_")] + ["PYTHONUNBUFFERED=1"]
    deps = _deps_without_xlplastic(tmp)
    out = {}

    # TPU pod: 2 workers
    t = tmp / "tpu"
    t.mkdir()
    tenv = dict(env, **_fakes(t), FAKE_TPU_ROOT=str(t / "pod"), FAKE_TPU_WORKERS="2", FAKE_TPU_NAME="fake-pod",
                XLPLASTIC_BUILD_PYTHON=sys.executable)
    for w in range(2):
        _worker_venv(t / "pod" / f"worker-{w}", deps)
    tcmd = [str(LAUNCH / "tpu_pod.sh"), "--port", str(free_port()), "--jax", "", "--logs", str(t / "logs"),
            *[a for kv in cache_env for a in ("--env", kv)],
            "fake-pod", "us-central2-b", str(TINY), str(t / "run"), *QUIET]
    # SLURM: 2 nodes, one task each
    s = tmp / "slurm"
    s.mkdir()
    senv = dict(env, **_fakes(s), XLPLASTIC_STAGE=str(s / "stage"), XLPLASTIC_PYTHON=sys.executable,
                XLPLASTIC_COORDINATOR_PORT=str(free_port()), FAKE_JOB_ID="4242")
    scmd = ["sbatch", "--nodes=2", "launch/slurm.sbatch", str(TINY), str(s / "run"), *QUIET]

    procs = {
        "tpu": (t, subprocess.Popen(tcmd, env=tenv, cwd=REPO, stdout=open(t / "out", "w"), stderr=subprocess.STDOUT)),
        "slurm": (s, subprocess.Popen(scmd, env=senv, cwd=REPO, stdout=open(s / "out", "w"), stderr=subprocess.STDOUT)),
    }
    ref = cached_run(tmp_path_factory, "tiny-30", QUIET, env)  # meanwhile: the one-process reference
    for name, (d, p) in procs.items():
        try:
            rc = p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
            rc = "timeout"
        out[name] = {"dir": d, "rc": rc, "out": (d / "out").read_text()}
    out["ref"] = ref
    return out


def _logs(d: Path, pattern: str) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(d.rglob(pattern)))


@pytest.mark.slow
def test_tpu_pod_launch_on_a_fake_pod_trains_like_one_process(launched):
    r = launched["tpu"]
    d = r["dir"]
    assert r["rc"] == 0, f"{r['out'][-4000:]}\n{_logs(d / 'logs', '*.log')}"
    calls = [c["args"][3:] for c in _calls(d) if c["prog"] == "gcloud"]
    assert calls[0][:2] == ["describe", "fake-pod"]
    ssh = [c for c in calls if c[0] == "ssh"]
    scp = [c for c in calls if c[0] == "scp"]
    assert len(scp) == 1 and "--worker=all" in scp[0]
    copied = {Path(a).name for a in scp[0][1:] if not a.startswith("-") and ":" not in a}
    assert {"REVISION", "config.yaml", "tpu_env.sh", "install.sh", "run.sh"} <= copied
    assert any(n.startswith("xlplastic-") and n.endswith(".whl") for n in copied), copied
    assert sorted(c[c.index("--command") - 1] for c in ssh if "run.sh" in c[-1]) == ["--worker=0", "--worker=1"]
    assert any("install.sh" in c[-1] and "--worker=all" in c for c in ssh)

    # every worker installed the wheel built from this checkout, and runs it
    revision = (d / "logs" / "REVISION").read_text().strip()
    install = (d / "logs" / "install.log").read_text()
    for w in range(2):
        venv = d / "pod" / f"worker-{w}" / "xlplastic-venv"
        assert re.search(rf"{re.escape(str(venv))}/lib/python[\d.]+/site-packages/xlplastic/__init__.py", install), install
        assert list(venv.glob("lib/python*/site-packages/xlplastic-*.dist-info"))
    assert install.count(revision) == 2, (revision, install)
    for w in range(2):
        log = (d / "logs" / f"worker-{w}.log").read_text()
        assert f"process {w} of 2, coordinator 127.0.0.1:" in log, log[-3000:]
        assert f"xlplastic: process {w}/2, 1 local / 2 global devices (cpu)" in log, log[-3000:]
        assert revision in log
    assert "done: step 30" in (d / "logs" / "worker-0.log").read_text()
    assert _rel_close(losses(d / "run"), losses(launched["ref"])), (losses(d / "run"), losses(launched["ref"]))
    assert [r["step"] for r in train_rows(d / "run")] == list(range(1, STEPS + 1))
    assert json.loads((d / "run" / "results.json").read_text())["final"]["processes"] == 2


@pytest.mark.slow
def test_slurm_launch_on_a_fake_cluster_trains_like_one_process(launched):
    r = launched["slurm"]
    d = r["dir"]
    stage = d / "stage" / "slurm-4242"
    assert r["rc"] == 0, f"{r['out'][-4000:]}\n{_logs(stage / 'logs', '*.log')}"
    assert "Submitted batch job 4242" in r["out"]
    (srun,) = [c["args"] for c in _calls(d) if c["prog"] == "srun"]
    assert srun[:3] == ["--kill-on-bad-exit=1", "bash", str(stage / "task.sh")]
    assert srun[3:7] == [sys.executable, "-m", "xlplastic.cli", "run"]
    assert srun[7] == str(stage / "config.yaml")  # the flattened config staged at the first start
    revision = (stage / "REVISION").read_text().strip()
    assert f"runs {revision} from {stage}" in r["out"]
    assert list((stage / "site").glob("xlplastic-*.dist-info")) and (stage / "site" / "xlplastic" / "cli.py").is_file()
    for rank in range(2):
        log = (stage / "logs" / f"task-{rank}.log").read_text()
        assert f"task {rank}/2 on " in log and "coordinator 127.0.0.1:" in log and "job 4242" in log, log[-3000:]
        assert f"xlplastic: process {rank}/2, 1 local / 2 global devices (cpu)" in log, log[-3000:]
    assert "done: step 30" in (stage / "logs" / "task-0.log").read_text()
    assert _rel_close(losses(d / "run"), losses(launched["ref"])), (losses(d / "run"), losses(launched["ref"]))
    assert json.loads((d / "run" / "results.json").read_text())["final"]["processes"] == 2


# --- the pieces, quickly ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodelist, first", [
    ("node[001-004,007],gpu2", "node001"), ("a1,b[2-3]", "a1"), ("node7", "node7"), ("gpu[03-05,9]", "gpu03"),
    ("n[5]", "n5"), ("127.0.0.[1-2]", "127.0.0.1"),
])
def test_slurm_task_derives_coordinator_count_and_id(nodelist, first):
    env = {"PATH": os.environ["PATH"], "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_ID": "1234",
           "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3"}
    done = _sh(["bash", str(LAUNCH / "slurm_task.sh"), "--print-env"], env)
    assert done.returncode == 0, done.stderr
    # the port as JAX's SLURM detection picks it: job id % 4096 + 61440
    assert done.stdout.split() == [f"XLPLASTIC_COORDINATOR={first}:62674", "XLPLASTIC_NUM_PROCESSES=4",
                                   "XLPLASTIC_PROCESS_ID=3"]


class _Metadata:
    """A GCE metadata server on localhost (header required, as the real one)."""

    def __init__(self, attrs: dict[str, str]):
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                key = self.path.rsplit("/", 1)[-1]
                ok = self.headers.get("Metadata-Flavor") == "Google" and key in attrs
                self.send_response(200 if ok else 404)
                self.end_headers()
                if ok:
                    self.wfile.write(attrs[key].encode())

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _tpu_env(env: dict[str, str]) -> subprocess.CompletedProcess:
    return _sh(["bash", str(LAUNCH / "tpu_env.sh"), "8482"], {"PATH": os.environ["PATH"], **env}, timeout=30)


def test_tpu_env_from_the_metadata_server_and_from_gke_variables():
    md = _Metadata({"agent-worker-number": "2", "worker-network-endpoints":
                    "w0:0:10.0.0.5,w1:1:10.0.0.6,w2:2:10.0.0.7,w3:3:10.0.0.8"})
    try:
        done = _tpu_env({"GCE_METADATA_IP": md.address})
    finally:
        md.close()
    assert done.stdout.split() == ["export", "XLPLASTIC_COORDINATOR=10.0.0.5:8482", "XLPLASTIC_NUM_PROCESSES=4",
                                   "XLPLASTIC_PROCESS_ID=2"], done.stderr
    md = _Metadata({"agent-worker-number": "1", "worker-network-endpoints": "t1v-n-0,t1v-n-1"})  # the newer format
    try:
        done = _tpu_env({"GCE_METADATA_IP": md.address})
    finally:
        md.close()
    assert "XLPLASTIC_COORDINATOR=t1v-n-0:8482 XLPLASTIC_NUM_PROCESSES=2 XLPLASTIC_PROCESS_ID=1" in done.stdout
    done = _tpu_env({"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "host-a,host-b,host-c"})  # GKE
    assert "XLPLASTIC_COORDINATOR=host-a:8482 XLPLASTIC_NUM_PROCESSES=3 XLPLASTIC_PROCESS_ID=0" in done.stdout


def test_tpu_env_leaves_unknowns_to_jax_auto_detection():
    done = _tpu_env({"GCE_METADATA_IP": f"127.0.0.1:{free_port()}"})  # nothing answers
    assert done.returncode == 0 and done.stdout == "" and "auto-detection" in done.stderr
    done = _tpu_env({"MEGASCALE_NUM_SLICES": "2", "TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "a,b"})
    assert done.returncode == 0 and done.stdout == "" and "multi-slice" in done.stderr


def _dry_env(tmp_path: Path) -> dict[str, str]:
    """No cluster variables; fakes that record any call (a dry run must make none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "XLPLASTIC_", "TPU_"))}
    return dict(env, **_fakes(tmp_path), FAKE_TPU_ROOT=str(tmp_path / "pod"), FAKE_TPU_WORKERS="2",
                FAKE_TPU_NAME="my-v5e-32")


def test_tpu_dry_run_prints_every_command_and_runs_none(tmp_path):
    env = _dry_env(tmp_path)
    logs = tmp_path / "logs"
    done = _sh([str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--logs", str(logs), "my-v5e-32", "us-west4-a",
                "configs/roberta_base.yaml", "/mnt/runs/rb", "--set", "train.steps=100"], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert _calls(tmp_path) == [] and not logs.exists()  # nothing ran, nothing written
    for needle in ("pip wheel --no-deps", "flatten_config.py configs/roberta_base.yaml", "train.steps=100",
                   "gcloud compute tpus tpu-vm describe my-v5e-32 --zone us-west4-a",
                   "gcloud compute tpus tpu-vm scp ", "--worker=all --command 'bash xlplastic-launch/",
                   "--worker=0 --command 'bash xlplastic-launch/", "export XLPLASTIC_DISTRIBUTED=auto",
                   "-m xlplastic.cli run xlplastic-launch/", "--run-dir /mnt/runs/rb --set train.steps=100",
                   "'jax[tpu]>=0.10.0,<0.12'", f"> {logs}/worker-0.log 2>&1 &"):
        assert needle in out, f"{needle!r} not in:\n{out}"
    assert "YOUR_ORG" not in out and "git clone" not in out
    # --repo URL --rev SHA installs that commit; a branch name is refused (it can move between workers)
    sha = "0123456789abcdef0123456789abcdef01234567"
    done = _sh([str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--workers", "4", "--repo", "https://example.org/x.git",
                "--rev", sha, "tpu", "z", "configs/tiny.yaml", "/r"], env)
    assert done.returncode == 0, done.stderr
    assert f"pip install -q 'xlplastic @ git+https://example.org/x.git@{sha}'" in done.stdout
    assert "pip wheel" not in done.stdout and "describe" not in done.stdout
    done = _sh([str(LAUNCH / "tpu_pod.sh"), "--dry-run", "--repo", "https://example.org/x.git", "--rev", "main",
                "tpu", "z", "configs/tiny.yaml", "/r"], env)
    assert done.returncode == 2 and "not a commit SHA" in done.stderr
    done = _sh([str(LAUNCH / "tpu_pod.sh"), "--repo", "https://example.org/x.git", "tpu", "z", "configs/tiny.yaml",
                "/r"], env)
    assert done.returncode == 2 and "--repo needs --rev" in done.stderr
    assert _calls(tmp_path) == []


def test_tpu_launch_checks_the_config_before_any_gcloud_call(tmp_path):
    env = dict(_dry_env(tmp_path), XLPLASTIC_BUILD_PYTHON=sys.executable)
    done = _sh([str(LAUNCH / "tpu_pod.sh"), "--workers", "2", "--logs", str(tmp_path / "logs"), "my-v5e-32",
                "us-west4-a", str(TINY), "/r", "--set", "train.stepz=3"], env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--set train.stepz=3: unknown config key `train.stepz`" in done.stderr
    assert _calls(tmp_path) == []


def test_slurm_dry_run_prints_every_command_and_runs_none(tmp_path):
    env = _dry_env(tmp_path)
    done = _sh(["bash", str(LAUNCH / "slurm.sbatch"), "--dry-run", "configs/roberta_base.yaml", "/shared/runs/rb",
                "--set", "train.steps=100"], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert _calls(tmp_path) == []
    assert not (REPO / "runs" / "launch" / "slurm-JOBID").exists()
    for needle in ("pip wheel --no-deps", "pip install -q --no-deps --target ", "flatten_config.py",
                   "XLPLASTIC_DISTRIBUTED=auto", "srun --kill-on-bad-exit=1 bash ", "task.sh",
                   "-m xlplastic.cli run ", "--run-dir /shared/runs/rb --set train.steps=100"):
        assert needle in out, f"{needle!r} not in:\n{out}"
    done = _sh(["bash", str(LAUNCH / "slurm.sbatch"), "configs/tiny.yaml", "/r"], env)
    assert done.returncode == 2 and "not inside a SLURM job" in done.stderr


def test_docs_show_the_dry_run_output():
    doc = (REPO / "docs" / "launch.md").read_text(encoding="utf-8")
    for needle in ("launch/tpu_pod.sh --dry-run", "launch/slurm.sbatch --dry-run",
                   "+ gcloud compute tpus tpu-vm scp ", "+ srun --kill-on-bad-exit=1 bash ",
                   "export XLPLASTIC_DISTRIBUTED=auto", "DCN"):
        assert needle in doc, needle
