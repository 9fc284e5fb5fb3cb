"""``vai-sidecar``: one command, one process role per sub-command.

Each role owns its entry point (``main(argv) -> int``) in its own package; this table only
names them, so the roles never import one another and a process loads only what its role needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

ROLES = {
    "serve": ("service.main", "the sidecar beside a model server: ingest, sampling, labels, read APIs, viewer"),
    "monitor": ("monitors.fleet.main", "drift and labelled windows for the whole fleet (leases share the models)"),
    "worker": ("attribution_workers.main", "explain sampled events with Captum (GPU or CPU)"),
    "demo": ("demo.main", "the whole loop on the digits CNN: embedded Redis and every role, replayed traffic"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ROLES:
        usage = "\n".join(f"  {name:8} {text}" for name, (_, text) in ROLES.items())
        print(f"usage: vai-sidecar {{{','.join(ROLES)}}} [options]\n\n{usage}", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(ROLES[args[0]][0])
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
