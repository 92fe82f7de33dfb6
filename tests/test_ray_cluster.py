"""effnet-label and effnet-eval on a real multi-node Ray: a head and a second raylet built by
the documented `ray` commands (docs/infer-and-label.md), with token authentication, on loopback only (a network
namespace of their own: benchmarks/ray_cluster.py). Stopped in every outcome."""
from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests_helpers import require_module, unavailable

require_module("ray", "the Ray engine needs ray (cluster extra)")
if not (shutil.which("unshare") and shutil.which("nsenter")):
    unavailable("no unshare/nsenter (util-linux)", module_level=True)

from effnet_lite.benchmarks.ray_cluster import RECIPE, ClusterError, LoopbackCluster  # noqa: E402

from conftest import DEV_DIR  # noqa: E402
from test_label import collection, rows_of  # noqa: E402,F401  (collection: the fixture, shared)
from tests_helpers import run_module, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABEL = [sys.executable, "-m", "effnet_lite.apps.label"]
EVAL = [sys.executable, "-m", "effnet_lite.benchmarks.evaluate"]


def readme_recipe() -> dict:
    """The `ray` commands of the documented cluster recipe, by role."""
    text = (ROOT / "docs" / "infer-and-label.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "ray get-auth-token" in b)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    found = {"token": [x for x in lines if x.startswith("ray get-auth-token")],
             "head": [x for x in lines if x.startswith("ray start --head")],
             "node": [x for x in lines if x.startswith("ray start --address")]}
    assert all(len(v) == 1 for v in found.values()), found
    assert "export RAY_AUTH_MODE=token" in lines and "chmod 600 ~/.ray/auth_token" in lines
    return {k: v[0] for k, v in found.items()}


def test_multi_node_ray_on_loopback(collection, lite0_files, tmp_path):  # noqa: F811
    """One cluster (built once: xdist cannot split one test across workers), then each part
    in turn; the cluster is stopped whatever happens."""
    recipe = readme_recipe()
    assert recipe == RECIPE        # the benchmark builds its clusters by the same commands
    try:
        cluster = LoopbackCluster([1, 1], recipe).__enter__()
    except ClusterError as e:
        if "namespace" in str(e):
            unavailable(str(e))
        raise
    try:
        photos = photo_folder(collection, tmp_path / "photos")
        local = local_rows(photos, lite0_files["int8.tflite"], tmp_path / "local")
        label_and_eval_on_two_nodes(cluster, photos, local, lite0_files, tmp_path / "a")
        for token in ("none", "wrong"):
            a_driver_without_the_token_is_refused(cluster, photos, lite0_files, tmp_path / token, token)
        killed_raylet_mid_run_then_resume(cluster, photos, local, lite0_files, tmp_path / "fault")
    finally:
        cluster.stop()


def photo_folder(collection, folder: Path) -> Path:
    """120 dev photos (enough batches that both actors get some) and the collection's broken
    file; the collection alone elsewhere."""
    folder.mkdir()
    for p in [*sorted(DEV_DIR.glob("*.JPEG"))[:120], *map(Path, collection[1])]:
        shutil.copyfile(p, folder / p.name)
    return folder


def local_rows(folder: Path, model, out: Path) -> dict[str, dict]:
    """The local engine's rows: what every Ray run must equal."""
    code, _, err = run_module("effnet_lite.apps.label", folder, "--model", model, "--output", out, "--workers", "2")
    assert code == 1 and "errors 1" in err, err         # the broken file, recorded
    return {r["path"]: r for r in rows_of(out)}


def same_rows(rows: list[dict], local: dict[str, dict], prefix: str = "") -> None:
    assert sorted(r["path"] for r in rows) == sorted(prefix + p for p in local)      # each image once
    for r in rows:
        mine = local[r["path"].removeprefix(prefix)]
        assert (r["indices"], r["labels"], r["error"] is None) == (mine["indices"], mine["labels"], mine["error"] is None)
        assert r["scores"] == pytest.approx(mine["scores"], abs=1e-6)


def sockets(cluster) -> set[str]:
    """The local and remote addresses of every TCP socket in the cluster's network namespace
    (IPv4-mapped IPv6 ones as IPv4)."""
    def address(field: str) -> str:
        raw = bytes.fromhex(field.split(":")[0])
        if len(raw) == 4:
            return str(ipaddress.IPv4Address(raw[::-1]))
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        return str(ip.ipv4_mapped or ip)
    pid = cluster.raylets()[0]
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            found.update(address(f) for f in line.split()[1:3])
    return found


def node_ids(cluster) -> set[str]:
    done = cluster.run(["ray", "status", "--address", cluster.address], timeout=60)
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"node_([0-9a-f]{56})", done.stdout))


def ran_on(stderr: str, program: str) -> dict[str, int]:
    """effnet-label/effnet-eval's closing line: node id prefix -> images."""
    line = next(x for x in stderr.splitlines() if x.startswith(f"{program}: Ray scored"))
    return {m[0]: int(m[1]) for m in re.findall(r"([0-9a-f]{12}) (\d+)", line.split(":", 2)[2])}


def label_and_eval_on_two_nodes(cluster, folder, local, lite0_files, tmp_path):
    """A driver process of its own (not the head's `ray start`), with the token: the Ray
    engine's rows equal the local engine's, actors ran on both nodes, and every Ray socket
    is on 127.0.0.1."""
    model = lite0_files["int8.tflite"]
    # the source as a location pyarrow reads (file://, as s3:// would be on a cluster), Parquet out
    # Ray Data starts its actors without waiting for them: on a fast machine the first could score all
    # 121 photos before the other node's actor was up. The test waits for both (Ray's own setting)
    both_up = {**cluster.env(), "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "120"}
    done = cluster.run([*LABEL, f"file://{folder}", "--model", model, "--output", tmp_path / "ray", "--engine", "ray",
                        "--ray-address", cluster.address, "--workers", "2", "--format", "parquet"],
                       env=both_up, timeout=300)
    assert done.returncode == 1, done.stderr            # the broken file, recorded
    assert all(line.startswith("effnet-label: ") for line in done.stderr.strip().splitlines()), done.stderr
    same_rows(rows_of(tmp_path / "ray"), local, "file://")
    nodes = node_ids(cluster)
    placed = ran_on(done.stderr, "effnet-label")
    assert len(nodes) == 2 and len(placed) == 2, (nodes, done.stderr)       # an actor on each node
    assert all(any(n.startswith(p) for n in nodes) for p in placed) and sum(placed.values()) == len(local)

    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    good = sorted(p for p, r in local.items() if r["error"] is None)[:40]
    (csv_dir / "labels.csv").write_text("file,class_index\n" + "".join(f"{p},{i % 7}\n" for i, p in enumerate(good)))
    code, _, err = run_module("effnet_lite.benchmarks.evaluate", model, "--data", csv_dir, "--json",
                              tmp_path / "local.json")
    assert code == 0, err
    done = cluster.run([*EVAL, model, "--data", csv_dir, "--engine", "ray", "--ray-address", cluster.address,
                        "--workers", "2", "--json", tmp_path / "ray.json"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert sum(ran_on(done.stderr, "effnet-eval").values()) == len(good), done.stderr   # (few: maybe one node)
    assert all(line.startswith("effnet-eval: ") for line in done.stderr.strip().splitlines()), done.stderr
    assert json.loads((tmp_path / "ray.json").read_text())["results"] == \
        json.loads((tmp_path / "local.json").read_text())["results"]

    seen = sockets(cluster)         # (the wildcards: in a namespace with loopback only)
    assert "127.0.0.1" in seen and seen <= {"127.0.0.1", "0.0.0.0", "::1", "::"}, seen
    done = cluster.run([sys.executable, "-c", "import ray, json; ray.init(address=%r, _node_ip_address='127.0.0.1',"
                        " log_to_driver=False); print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes())))"
                        % cluster.address], timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1]) == ["127.0.0.1", "127.0.0.1"], done.stderr


def a_driver_without_the_token_is_refused(cluster, folder, lite0_files, tmp_path, token):
    env = cluster.env(token=False) if token == "none" else \
        cluster.env(RAY_AUTH_TOKEN="0123456789abcdef0123456789abcdef")   # (wins over the file)
    started = time.monotonic()
    done = cluster.run([*LABEL, folder, "--model", lite0_files["int8.tflite"], "--output", tmp_path / "o",
                        "--engine", "ray", "--ray-address", cluster.address], env=env, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith(f"effnet-label: error: the Ray cluster at {cluster.address} refused this "
                                "driver's token") and "RAY_AUTH_MODE=token" in errors[0], errors
    assert time.monotonic() - started < 30            # not Ray's 20 s of retries, then a vague line


def killed_raylet_mid_run_then_resume(cluster, folder, local, lite0_files, tmp_path):
    """SIGKILL the second raylet while a job runs: it finishes on the head or stops in one
    line; a rerun with the same --output completes, nothing lost or labelled twice."""
    tmp_path.mkdir()
    out, listing = tmp_path / "out", tmp_path / "list.txt"
    some = sorted(local)[:64]
    listing.write_text("".join(f"{p}\n" for p in some))
    argv = [*LABEL, listing, "--model", lite0_files["int8.tflite"], "--output", out, "--engine", "ray",
            "--ray-address", cluster.address, "--workers", "2", "--shard-size", "8"]
    second = cluster.raylets()[-1]
    job = cluster.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(out.glob("part-*.jsonl"))) >= 2 or job.poll() is not None, 180, "two shards")
        assert job.poll() is None, "the job ended before the raylet could be killed"
        cluster.kill(second)
        _, err = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
    print(f"\nafter the kill: exit {job.returncode}; {err.strip().splitlines()[-1]}")
    if job.returncode != 0:
        errors = [line for line in err.splitlines() if "error" in line]
        assert job.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err
    first = rows_of(out)
    done = cluster.run(argv, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(first)} already in" in done.stderr
    rows = rows_of(out)
    assert rows[:len(first)] == first                 # finished shards untouched
    same_rows(rows, {p: local[p] for p in some})      # nothing twice, nothing lost
