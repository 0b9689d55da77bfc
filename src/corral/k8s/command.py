"""``corral k8s``: render manifests, cache a model (init container), drain an agent
(preStop hook)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from corral.config.schema import addr, non_negative_float
from corral.k8s.intent import FIELDS, IntentError

RENDER_HELP = """\
Write Kubernetes manifests for a fleet from a minimal intent file (YAML):

  models:
    - name: gemma-270m
      source: pvc://models/gemma-3-270m-q4_k_m.gguf   # or pkg:<package>, https://..., bundled
      replicas: {min: 0, max: 8}                      # min 0: scale to zero when idle
      slots: 4
      ctx_size: 8192
      resources: {cpu: "4", memory: 8Gi}              # or gpu: 1
  balancer: {replicas: 2}

Out come a weight cache (PersistentVolumeClaim), the balancers (StatefulSet, Services,
PodDisruptionBudget), one Deployment per model running `corral agent` (which runs
llama-server), and a KEDA ScaledObject per model that may scale. Apply them with
`kubectl apply -f`. See docs/kubernetes.md.

The intent's fields (field, default, meaning):
""" + "\n".join(f"  {path:28} {default:24} {meaning}" for path, default, meaning in FIELDS)

VALUES_HELP = """\
A values file (YAML) sets what the intent does not cover: image, imagePullPolicy,
nodeSelector, tolerations, labels, annotations, serviceType, and per model
models.<name>.nodeSelector / .tolerations. The intent may also carry them under
`values:`; the file wins."""


def add_arguments(sub: Any) -> None:
    """``render``, ``fetch`` and ``drain`` under ``corral k8s``."""
    render = sub.add_parser(
        "render",
        help="write Kubernetes manifests from an intent file",
        description=RENDER_HELP,
        epilog=VALUES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument("intent", type=Path, metavar="INTENT.yaml", help="the intent file")
    render.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="DIR",
        help="write one file per object into DIR (default: one YAML stream on stdout)",
    )
    render.add_argument("--values", type=Path, metavar="FILE", help="a values file (see below)")
    render.set_defaults(k8s=run_render, command_parser=render)

    fetch = sub.add_parser(
        "fetch",
        help="copy a model into the weight cache once, atomically (the init container)",
        description="Copy SOURCE to DEST unless DEST is there already (and verified, with "
        "--sha256): written under a temporary name, checked, then renamed, so a reader "
        "never sees half a file and pods starting together do not clash. SOURCE: a path, "
        "pkg:<package>, bundled, or an http(s) URL. Progress goes to stdout.",
    )
    fetch.add_argument("source")
    fetch.add_argument("dest", type=Path)
    fetch.add_argument("--sha256", help="the file's SHA-256 (64 hex digits)")
    fetch.set_defaults(k8s=run_fetch, command_parser=fetch)

    drain = sub.add_parser(
        "drain",
        help="ask an agent to drain and wait until it has (the preStop hook)",
        description="POST /drain to the agent's probe listener: it tells its balancers to "
        "send it nothing new, and answers once its server's requests in flight have "
        "ended (or after --timeout seconds).",
    )
    drain.add_argument(
        "probe_addr", type=addr, metavar="HOST:PORT", help="the agent's --probe-addr"
    )
    drain.add_argument(
        "--timeout",
        type=non_negative_float,
        default=120.0,
        help="seconds, 0 or more (0: mark it draining and return at once; default: 120)",
    )
    drain.set_defaults(k8s=run_drain, command_parser=drain)


def _load_yaml(path: Path, what: str) -> Any:
    """The YAML document at ``path``; ``what`` names it in errors ("" for the intent,
    which the error's prefix names already). Raises :class:`IntentError`."""
    import yaml

    where = f"{what} {path}: " if what else ""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise IntentError(f"{where}cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise IntentError(f"{where}not valid YAML: {exc}") from None


def run_render(args: argparse.Namespace) -> int:
    from corral.k8s.intent import parse_intent, parse_values
    from corral.k8s.render import dump, file_name, render

    try:
        data = _load_yaml(args.intent, "")
        intent = parse_intent(data)
        raw_values = _values(data.get("values"), "values") if isinstance(data, dict) else {}
        if args.values is not None:
            file = _load_yaml(args.values, "the values file")
            raw_values.update(_values(file, f"the values file {args.values}"))
        values = parse_values(raw_values, intent)
    except IntentError as exc:
        print(f"corral k8s render: {args.intent}: {exc}", file=sys.stderr)
        return 2
    objects = render(intent, values)
    if args.output is None:
        sys.stdout.write(dump(objects))
        return 0
    try:
        args.output.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            (args.output / file_name(obj)).write_text(dump([obj]))
    except OSError as exc:
        print(
            f"corral k8s render: cannot write into -o {args.output}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(objects)} manifests to {args.output}", file=sys.stderr)
    return 0


def _values(data: Any, where: str) -> dict[str, Any]:
    """Values as a mapping (None: none). Raises :class:`IntentError` for a YAML
    document of another shape (a list, a text)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IntentError(f"{where} must be a mapping (key: value), got {type(data).__name__}")
    return dict(data)


def run_fetch(args: argparse.Namespace) -> int:
    from corral.k8s.fetch import FetchError, fetch

    try:
        fetch(args.source, args.dest, args.sha256, report=lambda line: print(line, flush=True))
    except FetchError as exc:
        print(f"corral k8s fetch: {exc}", file=sys.stderr)
        return 1
    return 0


def run_drain(args: argparse.Namespace) -> int:
    url = f"{args.probe_addr.url()}/drain?timeout={args.timeout:g}"
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, method="POST")
        with urllib.request.urlopen(request, timeout=args.timeout + 5) as answer:
            body = json.loads(answer.read() or b"{}")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"corral k8s drain: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"drained in {time.monotonic() - started:.1f}s: {json.dumps(body)}")
    return 0
