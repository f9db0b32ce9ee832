"""The `ferfuse` command: demo, env (and the bench, flops and export-onnx commands)."""
import argparse
import statistics
import sys
import time

import torch


def _median_ms(fn, runs: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), (max(times) - min(times))


def demo(args) -> int:
    """Build DAN with seeded random weights and non-trivial BN statistics, optimise it (verified),
    print the report and a latency table eager vs ferfuse."""
    from ferfuse import engine, models

    torch.manual_seed(args.seed)
    model = models.randomize_batchnorm(models.dan(num_classes=7, num_heads=4), seed=args.seed).eval()
    eager = models.randomize_batchnorm(models.dan(num_classes=7, num_heads=4), seed=args.seed).eval()
    eager.load_state_dict(model.state_dict())
    print(f"DAN: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(model.state_dict())} state_dict entries, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    t0 = time.perf_counter()
    model.optimize(backend=args.backend)
    print(engine.report(model))
    print(f"optimize() took {time.perf_counter() - t0:.2f} s (folding, packing and verification)\n")

    gen = torch.Generator().manual_seed(args.seed + 1)
    print(f"{'batch':>5} {'eager ms':>10} {'ferfuse ms':>11} {'speed-up':>9} {'logits rel err':>15}")
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        with torch.no_grad():
            ref, out = eager(x)[0], model(x)[0]
            t_eager, _ = _median_ms(lambda: eager(x), args.runs)
            t_fused, _ = _median_ms(lambda: model(x), args.runs)
        rel = ((out - ref).norm() / ref.norm()).item()
        print(f"{batch:>5} {t_eager:>10.1f} {t_fused:>11.1f} {t_eager / t_fused:>8.2f}x {rel:>15.2e}")
    print(f"\n(median of {args.runs} runs each, measured alternately in this process; CPU timings are noisy)")
    return 0


def env(args) -> int:
    from ferfuse.env import main

    main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="optimise a seeded DAN, print the report and a latency table")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.set_defaults(func=demo)
    p = sub.add_parser("env", help="versions and backends, for bug reports")
    p.set_defaults(func=env)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
