"""Options every `lfm` command spells the same way, and the settings every command shares.

One convention each: `-h/--help`; `--progress/--no-progress` (`-q/--quiet` kept as a hidden
alias of `--no-progress`); `-v/--verbose`; `--threads` wherever work runs; choice lists read
from the registries (domains from `lfm_deploy.domains`, precisions from
`lfm_deploy.runtime.precisions`, execution providers from `lfm_deploy.runtime.providers`)
instead of copied lists.
"""

from __future__ import annotations

import functools

import click

from ..domains import EXPORT_PRECISIONS, RUN_PRECISIONS, list_domains
from . import THREADS, FiniteFloat, domain_choice_callback, verbose_option

#: context_settings of every command (and of the `lfm` group).
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}

#: --precision of lfm-build-engine: the TensorRT engine's (bf16 is an OpenVINO mode, not an engine).
ENGINE_PRECISIONS = tuple(p for p in EXPORT_PRECISIONS if p != "bf16")


def command(name: str | None = None, **kwargs):
    """`click.command` with the shared context settings (`-h`, defaults shown)."""
    return click.command(name, context_settings={**CONTEXT, **kwargs.pop("context_settings", {})}, **kwargs)


def progress_option(func):
    """`--progress/--no-progress` (default on), with `-q/--quiet` as a hidden alias of --no-progress.

    The command receives `progress` (bool); `quiet` never reaches it.
    """

    @functools.wraps(func)
    def wrapper(*args, progress, quiet, **kwargs):
        return func(*args, progress=progress and not quiet, **kwargs)

    wrapper = click.option("-q", "--quiet", is_flag=True, hidden=True, help="Same as --no-progress.")(wrapper)
    return click.option("--progress/--no-progress", default=True, help="Show a progress bar (on stderr).")(wrapper)


__all__ = ["CONTEXT", "ENGINE_PRECISIONS", "EXPORT_PRECISIONS", "RUN_PRECISIONS", "command", "domain_option",
           "progress_option", "providers_option", "run_precision_option", "set_torch_threads", "threads_option",
           "verbose_option"]


def threads_option(help: str = "CPU threads (torch and onnxruntime), at most the CPU cores (more are capped). "
                               "Default: all cores.", default: int | None = None):
    """`--threads N`: the type every --threads has (1..1024; capped to the cores where threads are made)."""
    return click.option("--threads", type=THREADS, default=default, help=help)


def domain_option(help: str | None = None, required: bool = True):
    """`--domain NAME`: a registered domain (`lfm_deploy.domains`; aliases accepted), as a `Domain`."""
    names = ", ".join(list_domains())
    return click.option("--domain", "domain", required=required, callback=domain_choice_callback, metavar="DOMAIN",
                        help=help or f"Target domain: {names} (aliases accepted).")


def memory_budget_option(process: str):
    """`--memory-budget GB` (default 1.5, `lfm_deploy.runtime.memory.DEFAULT_BUDGET`): the peak a model
    process may use; each inference run takes at most the queries that fit. `process` names it."""
    return click.option("--memory-budget", type=FiniteFloat(min=0, min_open=True), default=1.5, metavar="GB",
                        help=f"Peak memory {process} may use, in GB: each inference run takes at most the queries "
                             "that fit (measured per runtime: lfm_deploy.runtime.memory), whatever the batch size "
                             "says; masks are the same.")


def providers_option(help: str | None = None):
    """`--providers`: onnxruntime execution providers (`lfm_deploy.runtime.providers`), or one of the
    registry's other runtimes alone (`lfm_deploy.runtime.backends.selectors`: openvino)."""
    from ..runtime.backends import selectors
    from ..runtime.providers import PROVIDER_ALIASES

    first = {}
    for alias, name in PROVIDER_ALIASES.items():  # the first short name of each provider
        first.setdefault(name, alias)
    short = ", ".join(first.values())
    others = " or ".join(f"{name} alone (the {runtime} runtime)" for name, runtime in selectors().items())
    return click.option("--providers", default="cpu",
                        help=help or f"Execution providers, best first: {short} (comma-separated)"
                                     + (f"; or {others}" if others else "") + ". docs/backends.md lists every backend.")


def run_precision_option(func):
    """`--precision` of the commands that run an export (predict, serve): which graphs run."""
    return click.option(
        "--precision", type=click.Choice(RUN_PRECISIONS), default="auto",
        help="Which graphs run: auto (what the export was made at), fp32 (its float32 graphs, any export), fp16 / "
             "int8 (an export made at that precision; refused otherwise), bf16 (OpenVINO bf16 on the float32 "
             "graphs: --providers openvino). What ran is printed and recorded.")(func)


def set_torch_threads(threads: int | None) -> None:
    """`--threads` for commands that run torch (finetune, eval): torch's intra-op threads, capped to the cores.

    torch is imported only here, when such a command runs.
    """
    if threads is None:
        return
    import torch

    from ..utils.limits import cap_threads

    torch.set_num_threads(cap_threads(int(threads)))
