#!/usr/bin/env python
"""The ModelArts boot file and job commands: `python launcher/modelarts.py ...` (see
launcher/modelarts/boot.py). A script beside the package of the same name, so the boot command
of jobs already submitted keeps working; `import launcher.modelarts` is the package."""
import sys

if __name__ == "__main__":
    import bootstrap  # noqa: F401  (the repository root onto sys.path)
    from launcher.common import run_main
    from launcher.modelarts.boot import main
    sys.exit(run_main(main))
