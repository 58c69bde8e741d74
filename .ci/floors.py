"""Print a pip constraints file that pins every dependency of pyproject.toml (runtime and the
`dev` extra) to its floor: `name>=X` becomes `name==X`. CI's floors leg installs with it, so a
floor is a version the fast tests have passed on, not a guess.

Packages that constraints.txt pins are left out: its pin wins (torch stays the local CPU wheel).
A dependency without a plain `>=` floor is an error, so a new one cannot slip in unfloored.

Usage: python .ci/floors.py > floors.txt   (Python >= 3.11, for tomllib)
"""

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
FLOOR = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([^\s,;]+)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    pinned = {normalise(match[1]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if (match := PIN.match(line.strip()))}
    for requirement in requirements:
        match = FLOOR.match(requirement.strip())
        if match is None:
            print(f"floors.py: {requirement!r} has no plain `>=` floor", file=sys.stderr)
            return 1
        if normalise(match[1]) not in pinned:
            print(f"{match[1]}=={match[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
