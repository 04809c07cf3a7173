"""``tamer app``: argument parsing for the web page (the work is in tamer.app)."""

from __future__ import annotations

import argparse

from tamer.cli.options import device_option


def add_app_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    help = "Serve a web page to sample from transformers and reconstruct with VQGANs (needs tamer-vq[app])."
    sub = commands.add_parser("app", help=help, description=help + " Runs are queued, one at a time per model.")
    sub.set_defaults(run=run_app)
    sub.add_argument("--model", action="append", required=True, metavar="M",
                     help="a tamer model folder or CompVis .ckpt (project.yaml beside it); repeat for more tabs")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sub.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    device_option(sub)
    return sub


def run_app(args) -> int:
    from tamer.app import serve

    serve(args.model, host=args.host, port=args.port, device=args.device)
    return 0
