"""Paired A/B of two exports' head graphs in one process: same inputs, runs alternated.

On a shared machine the absolute times drift with the load; the ratio of two runs taken back to
back does not drift as much, so this reports the median of the per-round ratios B/A, next to
each side's median. It also checks that the two graphs agree: logits (max abs difference) and
masks (pixels that differ) on every query.

    python benchmarks/ab_head.py /tmp/h20corr/before /tmp/h20corr/after --batch 1 --iters 8

The two exports must share the head's inputs (same domain, size, shots and weights).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def head_feed(export: Path, batch: int, threads: int, seed: int = 0):
    """The head's feed for `batch` synthetic queries against a synthetic 1-shot support set."""
    from lfm_deploy.data.synthetic import synthetic_pair
    from lfm_deploy.runtime import Segmenter

    seg = Segmenter.from_artifacts(export, threads=threads)
    size = seg.image_size
    image, mask = synthetic_pair(size, seed, 0, 1)
    seg.set_support([np.asarray(image)], [np.asarray(mask)])
    queries = [np.asarray(synthetic_pair(size, seed, 0, 100 + i)[0]) for i in range(batch)]
    io = seg._io["head"]
    feed = {io.input("query"): np.stack([seg.preprocessing.image(q, "query")[0] for q in queries]),
            **seg._support.features}
    return feed, [io.output("per_shot"), io.output("mask")]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("a", type=Path, help="export directory A (the baseline)")
    parser.add_argument("b", type=Path, help="export directory B")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=8, help="rounds; each runs A and B once, in alternating order")
    parser.add_argument("--seeds", type=int, default=3, help="episodes (support + queries) for the agreement check")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from lfm_deploy.runtime.sessions import SessionConfig

    def session(export):
        opts = SessionConfig(threads=args.threads).session_options()
        return ort.InferenceSession(str(export / "head.onnx"), opts, providers=["CPUExecutionProvider"])

    sa, sb = session(args.a), session(args.b)
    agreement = []
    for seed in range(args.seeds):
        feed, outputs = head_feed(args.a, args.batch, args.threads, seed)
        (la, ma), (lb, mb) = sa.run(outputs, feed), sb.run(outputs, feed)
        agreement.append({"seed": seed, "logits_max_abs": float(np.abs(la - lb).max()),
                          "logits_peak": float(np.abs(la).max()),
                          "mask_pixels_differing": int((ma != mb).sum()),
                          "mask_foreground_share": float(ma.mean())})
        print(json.dumps(agreement[-1]))
    feed, outputs = head_feed(args.a, args.batch, args.threads, 0)
    for _ in range(args.warmup):
        sa.run(outputs, feed)
        sb.run(outputs, feed)
    ta, tb = [], []
    for i in range(args.iters):
        order = ((sa, ta), (sb, tb)) if i % 2 == 0 else ((sb, tb), (sa, ta))
        for sess, times in order:
            t = time.perf_counter()
            sess.run(outputs, feed)
            times.append(time.perf_counter() - t)
    from lfm_deploy.utils.versions import describe_cpu, machine

    ta, tb = np.array(ta), np.array(tb)
    result = {
        "a": str(args.a), "b": str(args.b), "batch": args.batch, "threads": args.threads, "iters": args.iters,
        "a_ms_median": float(np.median(ta) * 1e3), "b_ms_median": float(np.median(tb) * 1e3),
        "ratio_b_over_a_median": float(np.median(tb / ta)),
        "ratio_b_over_a_range": [float((tb / ta).min()), float((tb / ta).max())],
        "load_average": os.getloadavg(), "cpu": describe_cpu(machine()),
        "onnxruntime": ort.__version__, "agreement": agreement,
    }
    print(f"A {result['a_ms_median']:.0f} ms, B {result['b_ms_median']:.0f} ms per head run (batch {args.batch}); "
          f"paired B/A median {result['ratio_b_over_a_median']:.3f} "
          f"(range {result['ratio_b_over_a_range'][0]:.3f}-{result['ratio_b_over_a_range'][1]:.3f}), "
          f"load average {result['load_average'][0]:.1f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
