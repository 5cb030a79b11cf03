"""Same as `darkpy detect`; with no arguments: yolov3-tiny on the photos in data/images."""
import sys

from darkpy.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("detect"))
