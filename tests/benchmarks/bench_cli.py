"""Benchmark: how long the light `trl-sso` paths take in a fresh process (`--help` of the command, of `generate` and of
`push`), and which heavy libraries they import (none should: the target is well under 1 second).

    python tests/benchmarks/bench_cli.py [--repeats 5]
"""

import argparse
import subprocess
import sys
import time


PATHS = (["--help"], ["generate", "--help"], ["push", "--help"])
HEAVY = ("torch", "transformers", "trl", "datasets")
PROBE = (
    "import contextlib, io, sys\n"
    "from trl_sso.cli.main import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        main(sys.argv[1:])\n"
    "    except SystemExit:\n"
    "        pass\n"
    f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')\n"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    for argv in PATHS:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(["trl-sso", *argv], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        heavy = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
        times.sort()
        print(
            f"trl-sso {' '.join(argv):16} median {times[len(times) // 2] * 1000:6.0f} ms, slowest "
            f"{times[-1] * 1000:6.0f} ms; heavy imports: {heavy.stdout.strip()}"
        )


if __name__ == "__main__":
    main()
