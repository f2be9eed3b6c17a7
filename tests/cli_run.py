"""``seglab ...`` run as a user runs it: a fresh ``python -m seglab`` process."""
import subprocess
import sys


def seglab(*args, check=True) -> subprocess.CompletedProcess:
    """Run ``seglab ARGS`` in a new process; with ``check`` an AssertionError shows its output when it fails."""
    result = subprocess.run([sys.executable, "-m", "seglab", *map(str, args)], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"seglab {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result
