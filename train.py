"""Same as `darkpy train`."""
import sys

from darkpy.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train"))
