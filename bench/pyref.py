"""Runs the Python reference implementation on a Procfile's daemons.

    python3 bench/pyref.py PROCFILE

The reference (/work/shared/reference/sidecar_init.py, or $SIDECAR_INIT_REF)
is env-driven and runs a hard-coded table; it reads the module-level
`_DAEMONS` at call time, so this wrapper imports it by path, replaces that
tuple with the Procfile's entries and calls its `main()`. The reference file
itself is not modified.
"""

import importlib.util
import os
import shlex
import sys

REF = os.environ.get("SIDECAR_INIT_REF", "/work/shared/reference/sidecar_init.py")


def load_procfile(path):
    daemons = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, command = line.partition(":")
            daemons.append((name.strip(), tuple(shlex.split(command))))
    return daemons


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: pyref.py PROCFILE")
    spec = importlib.util.spec_from_file_location("sidecar_init_ref", REF)
    ref = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ref  # dataclasses look the module up by name
    spec.loader.exec_module(ref)
    ref._DAEMONS = tuple(ref._DaemonSpec(n, argv) for n, argv in load_procfile(sys.argv[1]))
    sys.exit(ref.main())


if __name__ == "__main__":
    main()
