"""`python -m lfm_deploy.cli`: the `lfm` command group."""

from .group import lfm

if __name__ == "__main__":  # pragma: no cover
    lfm(prog_name="lfm")
