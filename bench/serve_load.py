"""Load test of `rag-serve run` on loopback: N concurrent clients asking questions for D seconds.

Two servers run on the same index, one micro-batching and one answering one question at a time
(`--no-batching`); for each client count the two are measured back to back, which one goes first
alternating from one client count to the next, so both see the same machine. Each client sends a
question, waits for the answer, sends the next. When the time is up no new question is sent and those
in flight are waited for (so slow answers are counted, not cut off).

Throughput is measured in a steady-state window: from the moment every client has had its first
answer (all clients' first questions arrive together, a burst no later moment repeats) to the deadline
(or to the last question sent, when --max-requests stops the phase early). Only the answers completed
in the window count, over the window's seconds; ramp-up and the drain after the deadline do not.
Reported per phase: answered questions (whole phase and in the window), errors, the window, throughput
in it (and, as a cross-check that is smoother on short windows, clients / mean latency: Little's law
for closed-loop clients that do not pause), p50/p95/p99 latency of the window's answers, mean
micro-batch size over the whole phase (from the server's /metrics) and the server's peak resident memory.
The window must be long enough to hold several answers of every client: --duration well above p50.

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
import shlex
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
        log(f"starting the {name} server: {shlex.join(command[3:])}")
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


def window_figures(answers: list[tuple[float, float]], clients: int, window_start: float, window_end: float) -> dict[str, Any]:
    """Throughput and latency of the answers, (sent, ended) pairs, that ended in (window_start, window_end]."""
    seconds = max(window_end - window_start, 0.0)
    # Strictly after the start: the answer that opens the window was worked on before it.
    ms = np.asarray([(ended - sent) * 1e3 for sent, ended in answers if window_start < ended <= window_end])
    # An empty window (some client had no answer by the deadline) has no steady state to measure.
    figures = {"window_seconds": round(seconds, 2), "answered_in_window": len(ms),
               "throughput_qps": round(len(ms) / seconds, 4) if seconds else None}
    if not len(ms):
        return {**figures, "littles_law_qps": None, "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    return {
        **figures, "littles_law_qps": round(clients / (float(ms.mean()) / 1e3), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1), "mean_ms": round(float(ms.mean()), 1),
    }


async def run_phase(url: str, questions: list[str], clients: int, duration: float, max_requests: int,
                    drain_timeout: float, k: int, mode: str) -> dict[str, Any]:
    """`clients` closed-loop clients for `duration` seconds; returns counts, the steady-state window and latencies."""
    answers: list[tuple[float, float]] = []
    first_ends: dict[int, float] = {}
    errors: dict[str, int] = {}
    sent = 0
    start = time.perf_counter()
    deadline = start + duration
    stopped_sending = deadline
    last_end = start

    async def client(n: int, http: httpx.AsyncClient) -> None:
        nonlocal sent, stopped_sending, last_end
        i = n
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            if sent == max_requests:
                stopped_sending = time.perf_counter()
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
            first_ends.setdefault(n, t1)
            if status == "200":
                answers.append((t0, t1))
            else:
                errors[status] = errors.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=duration + drain_timeout) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    # A client that got no response by the end never left the ramp-up: the window is then empty.
    window_start = max(first_ends.values()) if len(first_ends) == clients else stopped_sending
    window_end = stopped_sending
    elapsed = last_end - start
    return {
        "clients": clients, "answered": len(answers), "errors": sum(errors.values()), "errors_by_kind": errors,
        "seconds": round(elapsed, 2), "window_s": [round(window_start - start, 2), round(window_end - start, 2)],
        **window_figures(answers, clients, window_start, window_end),
        "throughput_whole_phase_qps": round(len(answers) / elapsed, 4) if elapsed > 0 else 0.0,
    }


def measure(server: ServerUnderTest, questions: list[str], clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One phase against one server, with its batch sizes and peak memory."""
    before = server.batch_totals()
    load_at_start = round(os.getloadavg()[0], 2)
    server.sample_memory()
    log(f"{server.name}: {clients} clients for {args.duration:g} s ...")
    phase = asyncio.run(run_phase(server.url, questions, clients, args.duration, args.max_requests,
                                  args.drain_timeout, args.k, args.mode))
    peak = server.stop_sampling()
    after = server.batch_totals()
    batches = after[1] - before[1]
    # Other work on a shared machine changes the figures: its 1-minute load average at the start and the end.
    phase.update(batching=server.name, mean_batch_size=round((after[0] - before[0]) / batches, 2) if batches else None,
                 peak_rss_mib=round(peak / 2**20, 1), loadavg_1min=[load_at_start, round(os.getloadavg()[0], 2)])
    log(f"{server.name}: {phase['answered']} answered, {phase['errors']} errors; window {phase['window_s']} s: "
        f"{phase['answered_in_window']} answered, {phase['throughput_qps']} q/s (clients / mean latency "
        f"{phase['littles_law_qps']}), p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms; batch {phase['mean_batch_size']}")
    return phase


def ratio(on: float | None, off: float | None) -> float | None:
    """on / off to 3 places, or None where either figure is missing or off is 0."""
    return round(on / off, 3) if on is not None and off else None


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
    common = ["--index", str(args.index), "--k", str(args.k), "--mode", args.mode, *shlex.split(args.server_args)]
    servers = {
        "on": ServerUnderTest("on", [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]),
        "off": ServerUnderTest("off", [*common, "--no-batching"]),
    }
    phases: list[dict[str, Any]] = []
    try:
        for server in servers.values():  # the first answer of a server pays for lazy set-up
            httpx.post(server.url + "ask", json={"question": "warm up", "k": args.k, "mode": args.mode}, timeout=600)
        for n, clients in enumerate(args.clients):
            # Alternate which server goes first, so neither always meets the machine as the other left it.
            for position, name in enumerate(("on", "off") if n % 2 == 0 else ("off", "on"), 1):
                phases.append({**measure(servers[name], questions, clients, args), "ran": position})
        peaks = {name: round(server.rss_bytes("VmHWM") / 2**20, 1) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    comparison = {}
    for clients in args.clients:
        on, off = (next(p for p in phases if p["clients"] == clients and p["batching"] == b) for b in ("on", "off"))
        comparison[str(clients)] = {
            "throughput_speedup": ratio(on["throughput_qps"], off["throughput_qps"]),
            "littles_law_speedup": ratio(on["littles_law_qps"], off["littles_law_qps"]),
            "p95_on_over_off": ratio(on["p95_ms"], off["p95_ms"]),
            "errors": on["errors"] + off["errors"],
            "first": "on" if on["ran"] == 1 else "off",
        }
    goal = comparison.get("16")
    results = {
        "settings": {"index": str(args.index), "clients": args.clients, "duration_s": args.duration, "k": args.k,
                     "mode": args.mode, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                     "questions": f"{args.questions} (seeded sample of {len(questions)})", "server_args": args.server_args,
                     "window": "from every client's first answer to the deadline (or the last question sent)"},
        "phases": phases,
        "comparison": comparison,
        "server_peak_rss_mib": peaks,
        "goal": {"speedup_at_16_clients": ">= 2", "p95_at_16_clients": "on <= off", "errors": 0,
                 "met": None if goal is None else bool(goal["throughput_speedup"] and goal["throughput_speedup"] >= 2
                                                       and goal["p95_on_over_off"] is not None and goal["p95_on_over_off"] <= 1
                                                       and goal["errors"] == 0)},
    }
    write_result(out, results, info)


if __name__ == "__main__":
    main()
