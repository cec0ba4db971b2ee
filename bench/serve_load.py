"""Load test of `rag-serve run` on loopback: N concurrent clients asking questions for D seconds.

Two servers run on the same index, one micro-batching and one answering one question at a time
(`--no-batching`); for each client count the two are measured back to back (batching first), so
both see the same machine. Each client sends a question, waits for the answer, sends the next.
When the time is up no new question is sent and those in flight are waited for (so slow answers are
counted, not cut off). Reported per phase: answered questions, errors, throughput, p50/p95/p99
latency, mean micro-batch size (from the server's /metrics) and the server's peak resident memory.

Bounded: --duration seconds and --max-requests per phase, --drain-timeout for the last answers;
the servers listen on 127.0.0.1 only.

    python bench/serve_load.py --index indexes/default --clients 16 64 --duration 60
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import check_out, default_out, log, machine_info, read_qa, write_result  # noqa: E402

START_TIMEOUT = 600.0


class ServerUnderTest:
    """`rag-serve run` in a child process on a free loopback port, with its resident memory sampled."""

    def __init__(self, name: str, options: list[str]) -> None:
        self.name = name
        command = [sys.executable, "-c", "from serve.cli import main; raise SystemExit(main())", "run",
                   "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", *options]
        log(f"starting the {name} server: {' '.join(command[3:])}")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.url = ""
        self.output: list[str] = []
        self.peak_rss = 0
        self._sampling = False
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.url:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit(f"the {name} server did not start: {self.output[-10:]}")
            time.sleep(0.1)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            if " open http://" in line:
                self.url = line.split(" open ", 1)[1].split()[0]

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory now (VmRSS) or at its peak so far (VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) * 1024

    def sample_memory(self) -> None:
        """Sample resident memory every 0.2 s until `stop_sampling`; the phase's peak is `peak_rss`."""
        self.peak_rss, self._sampling = self.rss_bytes(), True

        def sample() -> None:
            while self._sampling and self.process.poll() is None:
                self.peak_rss = max(self.peak_rss, self.rss_bytes())
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()

    def stop_sampling(self) -> int:
        self._sampling = False
        return self.peak_rss

    def batch_totals(self) -> tuple[float, float]:
        """(questions, batches) answered so far, from the server's Prometheus metrics."""
        text = httpx.get(self.url + "metrics", timeout=30).text
        total = float(re.search(r"^rag_ask_batch_size_sum (\S+)", text, re.M).group(1))
        count = float(re.search(r"^rag_ask_batch_size_count (\S+)", text, re.M).group(1))
        return total, count

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def run_phase(url: str, questions: list[str], clients: int, duration: float, max_requests: int,
                    drain_timeout: float, k: int, mode: str) -> dict[str, Any]:
    """`clients` closed-loop clients for `duration` seconds; returns counts and latencies."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    start = time.perf_counter()
    deadline = start + duration
    last_end = start

    async def client(n: int, http: httpx.AsyncClient) -> None:
        nonlocal sent, last_end
        i = n
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            question = questions[i % len(questions)]
            i += clients
            t0 = time.perf_counter()
            try:
                response = await http.post("/ask", json={"question": question, "k": k, "mode": mode})
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            t1 = time.perf_counter()
            last_end = max(last_end, t1)
            if status == "200":
                latencies.append(t1 - t0)
            else:
                errors[status] = errors.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=duration + drain_timeout) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    elapsed = last_end - start
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    return {
        "clients": clients, "answered": len(latencies), "errors": sum(errors.values()), "errors_by_kind": errors,
        "seconds": round(elapsed, 2), "throughput_qps": round(len(latencies) / elapsed, 4) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1), "mean_ms": round(float(ms.mean()), 1),
    }


def measure(server: ServerUnderTest, questions: list[str], clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One phase against one server, with its batch sizes and peak memory."""
    before = server.batch_totals()
    server.sample_memory()
    log(f"{server.name}: {clients} clients for {args.duration:g} s ...")
    phase = asyncio.run(run_phase(server.url, questions, clients, args.duration, args.max_requests,
                                  args.drain_timeout, args.k, args.mode))
    peak = server.stop_sampling()
    after = server.batch_totals()
    batches = after[1] - before[1]
    phase.update(batching=server.name, mean_batch_size=round((after[0] - before[0]) / batches, 2) if batches else None,
                 peak_rss_mib=round(peak / 2**20, 1))
    log(f"{server.name}: {phase['answered']} answered, {phase['errors']} errors, {phase['throughput_qps']:.3f} q/s, "
        f"p50 {phase['p50_ms']:.0f} ms, p95 {phase['p95_ms']:.0f} ms, batch {phase['mean_batch_size']}")
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"))
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent clients, one phase each")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per phase (default 60)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="most questions sent in one phase")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="longest wait for the answers in flight")
    parser.add_argument("--questions", default="squad-open-dev", help="QA file under the shared data folder (../shared/data/qa)")
    parser.add_argument("--n-questions", type=int, default=1000, help="seeded sample of its questions")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--mode", default="hybrid")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--server-args", default="", help="more `rag-serve run` options for both servers, e.g. '--reader X'")
    parser.add_argument("--out", type=Path, default=default_out(__file__))
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 600 or min(args.clients) < 1 or max(args.clients) > 256:
        raise SystemExit("--duration must be in (0, 600] seconds and --clients from 1 to 256")
    out = check_out(args.out)
    info = machine_info()
    records = read_qa(args.questions)
    questions = [r["question"] for r in random.Random(0).sample(records, min(args.n_questions, len(records)))]
    common = ["--index", str(args.index), "--k", str(args.k), "--mode", args.mode, *args.server_args.split()]
    servers = {
        "on": ServerUnderTest("on", [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]),
        "off": ServerUnderTest("off", [*common, "--no-batching"]),
    }
    phases: list[dict[str, Any]] = []
    try:
        for server in servers.values():  # the first answer of a server pays for lazy set-up
            httpx.post(server.url + "ask", json={"question": "warm up", "k": args.k, "mode": args.mode}, timeout=600)
        for clients in args.clients:
            for server in servers.values():
                phases.append(measure(server, questions, clients, args))
        peaks = {name: round(server.rss_bytes("VmHWM") / 2**20, 1) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    comparison = {}
    for clients in args.clients:
        on, off = (next(p for p in phases if p["clients"] == clients and p["batching"] == b) for b in ("on", "off"))
        comparison[str(clients)] = {
            "throughput_speedup": round(on["throughput_qps"] / off["throughput_qps"], 3) if off["throughput_qps"] else None,
            "p95_on_over_off": round(on["p95_ms"] / off["p95_ms"], 3) if off["p95_ms"] else None,
            "errors": on["errors"] + off["errors"],
        }
    goal = comparison.get("16")
    results = {
        "settings": {"index": str(args.index), "clients": args.clients, "duration_s": args.duration, "k": args.k,
                     "mode": args.mode, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                     "questions": f"{args.questions} (seeded sample of {len(questions)})", "server_args": args.server_args},
        "phases": phases,
        "comparison": comparison,
        "server_peak_rss_mib": peaks,
        "goal": {"speedup_at_16_clients": ">= 2", "p95_at_16_clients": "on <= off", "errors": 0,
                 "met": None if goal is None else bool(goal["throughput_speedup"] and goal["throughput_speedup"] >= 2
                                                       and goal["p95_on_over_off"] <= 1 and goal["errors"] == 0)},
    }
    write_result(out, results, info)


if __name__ == "__main__":
    main()
