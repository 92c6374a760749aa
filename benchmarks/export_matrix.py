"""Run `lfm-export` over the whole support matrix and tabulate parity, lint and time.

Every domain x APM variant x K x lowering (4 x 2 x 2 x 2 = 32 exports by default), at each
domain's own image size (400x400), through the public `export_domain` API, i.e. exactly what
`lfm-export --domain D --apm A --shots K --lowering L --checkpoint C` runs, validation included.

Weights: with the untrained default every pixel falls in one class, so "masks identical" would
be trivially true. By default each (domain, APM) pair therefore exports a *test checkpoint*
written by `lfm_deploy.parity.testing.make_mixed_checkpoint`: the seeded default weights with
trained-looking masker values (per-channel APM gates and ACPA weights drawn from a seeded
normal) and the last learner layer rescaled so that the domain's validation episode gets
unit-scale margins and a mixed mask. It goes through the
real `--checkpoint` path. `--weights default` exports the untrained default instead.

Validation episodes: domain i of `--domains` is validated with `--seed` + i (`lfm-export --seed`),
so the RGB domains, which share one normalisation, still meet different episodes and checkpoints.

    python benchmarks/export_matrix.py                      # the full matrix (~1 h on 2 cores)
    python benchmarks/export_matrix.py --domains deepglobe --shots 1 --lowerings matmul

Writes `benchmarks/results/export_matrix.{json,md}` (`--out PREFIX`); exported artifacts go to
`--work` (default `artifacts/matrix`) and are deleted after each row unless `--keep`.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("export_matrix")


def _test_checkpoint(domain, apm: str, shots: int, size: int | None, path: Path, seed: int = 0) -> dict:
    """Write the trained-looking test checkpoint for (domain, apm); returns its mask statistics."""
    import torch

    from lfm_deploy.contract import default_io
    from lfm_deploy.models import build_model
    from lfm_deploy.models.hsnet import vote_masks
    from lfm_deploy.parity.compare import decision_margins
    from lfm_deploy.parity.episodes import validation_episode
    from lfm_deploy.parity.testing import make_mixed_checkpoint

    size = size or domain.image_size
    make_mixed_checkpoint(path, image_size=size, domain=domain.name, apm=apm, shots=shots, seed=seed,
                          masker_seed=seed)
    model, _ = build_model(apm=apm, acpa=True, image_size=size, checkpoint=path)
    episode = validation_episode(domain, shots, batch=1, seed=seed, image_size=size)
    io = default_io("episode", size, shots)
    q, s, m = (torch.from_numpy(episode[io.input(r)]) for r in ("query", "supports", "masks"))
    with torch.no_grad():
        logits = model.shot_logits(q, s, m)
    votes = torch.stack([x.argmax(dim=1) for x in logits]).sum(dim=0)
    mask = vote_masks(votes, shots)
    margin = decision_margins([x.numpy() for x in logits])  # how close each pixel is to a tie
    return {"foreground": float(mask.float().mean()), "mask": mask[0].numpy(), "margin": margin[0],
            "episode": episode}


def _mask_differences(out: Path, ref: dict, threads: int) -> dict:
    """Run the exported episode graph on the validation episode; where does its mask differ?"""
    from lfm_deploy.manifest import read_manifest
    from lfm_deploy.runtime.sessions import SessionFromOnnx

    io = read_manifest(out, verify_files=False).io("episode")
    (mask,) = SessionFromOnnx(out / io.file, threads=threads)().run([io.output("mask")], ref["episode"])
    differ = mask[0].astype(np.int64) != ref["mask"].astype(np.int64)
    return {"pixels_differing": int(differ.sum()),
            "max_eager_margin_at_differing": float(ref["margin"][differ].max()) if differ.any() else None}


def _row(result, seconds: float, fg: float | None) -> dict:
    checks = {f"{c.graph}.{c.output}": c for c in result.checks}
    logits = [c for k, c in checks.items() if k in ("episode.logits", "head.shot_logits")]
    masks = [c for k, c in checks.items() if k.endswith(".mask")]
    feats = [c for k, c in checks.items() if k.startswith("encoder.")]
    sign = result.manifest.parity.acpa_sign_case or {}
    return {
        "passed": bool(result.passed),
        "logits_max_abs": max((c.value for c in logits), default=None),
        "logits_tolerance": logits[0].tolerance.limit if logits else None,
        "feature_max_rel": max((c.value for c in feats), default=None),
        "branch_cut_channels_excluded": sum(c.stats.excluded or 0 for c in feats),
        "mask_agreement_min": min((c.value for c in masks), default=None),
        "masks_identical": all(c.value == 1.0 for c in masks),
        "reference_foreground": fg,
        "acpa_negative_support_channels": sign.get("support", {}).get("negative_sum"),
        "acpa_negative_query_channels": sign.get("query", {}).get("negative_sum"),
        "tensorrt10_lint_clean": bool(result.lint.get("ok")),
        "seconds": round(seconds, 1),
        "checks": [c.to_dict() for c in result.checks],
    }


def _markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# lfm-export support matrix",
        "",
        f"Command: `{meta['command']}`  ",
        f"Weights: {meta['weights']}; validation episode seeds: {meta['seeds']}.  ",
        f"{meta['machine']}; {meta['versions']}; total {meta['minutes']:.1f} min.",
        "",
        "| domain | APM | K | lowering | result | logits max abs (tol) | features max rel (branch-cut channels "
        "excluded) | masks identical "
        "(agreement) | differing pixels (largest eager margin there) | foreground | ACPA neg. channels "
        "(support / query) | TRT 10 lint | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['domain']} | {r['apm']} | {r['shots']} | {r['lowering']} | **ERROR** | "
                         f"{r['error'][:80]} | | | | | | | |")
            continue
        logits = "-" if r["logits_max_abs"] is None else f"{r['logits_max_abs']:.2e} ({r['logits_tolerance']:g})"
        fg = "-" if r["reference_foreground"] is None else f"{100 * r['reference_foreground']:.1f}%"
        if r.get("pixels_differing") is None:
            differ = "-"
        elif r["pixels_differing"] == 0:
            differ = "0"
        else:
            differ = f"{r['pixels_differing']} ({r['max_eager_margin_at_differing']:.1e})"
        lines.append(
            f"| {r['domain']} | {r['apm']} | {r['shots']} | {r['lowering']} | {'pass' if r['passed'] else '**FAIL**'} | "
            f"{logits} | {r['feature_max_rel']:.2e} ({r['branch_cut_channels_excluded']}) | "
            f"{'yes' if r['masks_identical'] else 'no'} "
            f"({r['mask_agreement_min']:.6f}) | {differ} | {fg} | {r['acpa_negative_support_channels']} / "
            f"{r['acpa_negative_query_channels']} | {'clean' if r['tensorrt10_lint_clean'] else 'findings'} | "
            f"{r['seconds']} |"
        )
    n_pass = sum(1 for r in rows if r.get("passed"))
    lines += ["", f"{n_pass} of {len(rows)} exports passed (registry tolerances: logits max abs, encoder features "
              "relative to their peak, mask agreement >= 0.999).", "",
              "*Differing pixels* compares the exported episode graph's mask with the eager model's on the validation "
              "episode; the margin in brackets is the eager model's smallest |logit difference| over the shots at "
              "those pixels: a value near the logits error means the pixel sits on a tie, where float32 summation "
              "order decides. *ACPA neg. channels*: layer4 channels entering ACPA with a negative spatial sum (the "
              "DC-phase sign case of docs/numerics.md), over the 3 x 2048 x K support and 3 x 2048 query channels. "
              "*Branch-cut channels*: support layer4 channels (of 3 x 2048 x K) with a spectrum bin within 1e-5 "
              "sum|x| of the negative real axis, i.e. with a phase that float32 rounding upstream of APM can put at "
              "+pi or -pi (the backbone alone differs by up to 4.6e-6 sum|x| between onnxruntime and PyTorch); APM "
              "scales the phase, so such a channel comes out at +s*pi or -s*pi. They are left out of the feature "
              "statistic and covered by the logits and mask checks (`lfm_deploy.parity.compare.branch_cut_channels`). "
              "*TRT 10 lint*: the TensorRT 10 readiness lint; `findings` on `dft` rows is its expected report that "
              "TensorRT before 11.2 has no DFT (that lowering is for runtimes that have it)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from lfm_deploy.domains import get_domain, list_domains

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", nargs="+", default=list(list_domains()), help="registry names (default: all)")
    p.add_argument("--apm", nargs="+", default=["s", "m"], choices=["s", "m"])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--lowerings", nargs="+", default=["matmul", "dft"], choices=["matmul", "dft"])
    p.add_argument("--weights", choices=["test-checkpoint", "default"], default="test-checkpoint",
                   help="test-checkpoint: trained-looking weights with mixed masks (see module doc)")
    p.add_argument("--size", type=int, default=None, help="override the image size (default: each domain's)")
    p.add_argument("--seed", type=int, default=0,
                   help="validation episode seed of the first domain; the i-th domain uses seed + i")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("artifacts/matrix"))
    p.add_argument("--keep", action="store_true", help="keep the exported artifacts")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_matrix")
    p.add_argument("--overwrite", action="store_true", help="replace result files not written by a benchmark")
    args = p.parse_args(argv)
    from lfm_deploy.errors import LFMError
    from lfm_deploy.utils.outputs import results_dir

    try:  # the result files are checked before the exports run
        results, names = results_dir(args.out, (".json", ".md"), overwrite=args.overwrite)
    except LFMError as exc:
        p.error(exc.cli_message())
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import onnxruntime
    import torch

    from lfm_deploy import __version__
    from lfm_deploy.errors import LFMError
    from lfm_deploy.export.pipeline import export_domain

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t_start = time.perf_counter()
    combos = [(d, a, k, lw) for d in args.domains for a in args.apm for k in args.shots for lw in args.lowerings]
    ckpts: dict = {}
    for i, (name, apm, shots, lowering) in enumerate(combos, 1):
        dom = get_domain(name)
        seed = args.seed + args.domains.index(name)
        row = {"domain": dom.name, "apm": apm, "shots": shots, "lowering": lowering, "seed": seed}
        checkpoint, ref = None, None
        if args.weights == "test-checkpoint":
            key = (dom.name, apm, shots)
            if key not in ckpts:
                ckpts.clear()  # one reference episode in memory at a time
                path = args.work / f"test-{dom.name}-apm{apm}-k{shots}.pt"
                ckpts[key] = (path, _test_checkpoint(dom, apm, shots, args.size, path, seed=seed))
            checkpoint, ref = ckpts[key]
        out = args.work / f"{dom.name}-apm{apm}-k{shots}-{lowering}"
        print(f"[{i}/{len(combos)}] {dom.name} APM-{apm.upper()} K={shots} {lowering} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = export_domain(dom, out=out, checkpoint=checkpoint, apm=apm, acpa=True, shots=shots,
                                   lowering=lowering, seed=seed, image_size=args.size, threads=args.threads,
                                   progress=False)
            row.update(_row(result, time.perf_counter() - t0, ref["foreground"] if ref else None))
            if ref is not None:
                row.update(_mask_differences(out, ref, args.threads))
        except LFMError as exc:  # a parity failure or an export error: record it, go on
            row.update({"passed": False, "error": str(exc).splitlines()[0], "seconds": round(time.perf_counter() - t0, 1)})
        rows.append(row)
        print(f"    {'pass' if row.get('passed') else 'FAIL'}: logits {row.get('logits_max_abs')}, masks identical "
              f"{row.get('masks_identical')}, ACPA negative channels {row.get('acpa_negative_support_channels')}, "
              f"{row['seconds']} s", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.with_name(out.name + ".failed"), ignore_errors=True)

    meta = {
        "command": "python benchmarks/export_matrix.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": ("test checkpoints (seeded default + trained-looking masker + balanced last layer)"
                    if args.weights == "test-checkpoint" else "the untrained default"),
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs, "
                   f"{args.threads} threads",
        "versions": f"lfm-deploy {__version__}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
        "minutes": (time.perf_counter() - t_start) / 60,
        "seeds": ", ".join(f"{d} {args.seed + i}" for i, d in enumerate(args.domains)),
    }
    results.write_json(names[".json"], {"meta": meta, "rows": rows})
    results.write_text(names[".md"], _markdown(rows, meta))
    print(_markdown(rows, meta))
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
