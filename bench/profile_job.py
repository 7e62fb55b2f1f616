"""Profile the hub (py-spy) during a ``scheduleDeviceMethod`` job over N lean devices.

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile_job --devices 10000 --jobs 3 --out /tmp/hub.txt

Starts the hub and the lean fleet like ``bench.run``, attaches ``py-spy record`` to the hub
for the jobs only, and prints the functions with the most samples (self and inclusive),
from py-spy's collapsed stacks. ``--phase connect`` profiles the connects instead,
``--phase patch`` durable reported PATCHes.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._procs import FleetProc, Hub
from bench.run import method_job


def top(collapsed: Path, limit: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} samples", "-- self --"]
    out += [f"{100 * n / total:5.1f}% {f}" for f, n in own.most_common(limit)]
    out += ["-- inclusive --"]
    out += [f"{100 * n / total:5.1f}% {f}" for f, n in incl.most_common(limit)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--phase", choices=("job", "connect", "patch"), default="job",
                        help="what to profile: method jobs, the connects, or durable reported PATCHes (one per device per --jobs)")
    parser.add_argument("--hub-loop", default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", default="hub-profile.txt", help="collapsed stacks (py-spy raw format)")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp), env={"IOT_FLOWS_HUB_LOOP": args.hub_loop} if args.hub_loop else None)
        try:
            hub.provision(args.devices)
            spy = None
            if args.phase == "connect":
                spy = subprocess.Popen([pyspy, "record", "--format", "raw", "-r", "200", "-o", args.out,
                                        "--pid", str(hub.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            fleet = FleetProc("hub", hub.device_port, args.devices)
            print("connect", fleet.ready, file=sys.stderr)
            if args.phase == "job":
                spy = subprocess.Popen([pyspy, "record", "--format", "raw", "-r", "200", "-o", args.out,
                                        "--pid", str(hub.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                for i in range(args.jobs):
                    print("job", method_job(hub, args.devices, f"profile-{i}"), file=sys.stderr)
            elif args.phase == "patch":
                spy = subprocess.Popen([pyspy, "record", "--format", "raw", "-r", "200", "-o", args.out,
                                        "--pid", str(hub.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                for _ in range(args.jobs):
                    print("patch", fleet.command("patch"), file=sys.stderr)
            assert spy is not None
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            fleet.stop()
        finally:
            hub.stop()
    print(top(Path(args.out), args.top))


if __name__ == "__main__":
    main()
