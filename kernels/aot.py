"""Ahead-of-time compilation of every kernel configuration the engine can launch, for a GPU this
machine does not have: `python -m ferfuse.kernels.aot --target sm_90`.

Catches what the interpreter forgives (tl.dot tile minimums, power-of-two shapes, dtype
mismatches), checks shared memory against the target's per-block limit (a kernel over it compiles,
then fails at launch), and shows whether tensor-core instructions (mma / wgmma) were emitted.
Run with TRITON_INTERPRET unset: interpreted kernels cannot be compiled.
"""
import argparse
import os
import re
import sys
import time

# Opt-in shared memory per block (bytes): A100 (sm_80) and H100 (sm_90).
SHARED_MEMORY_LIMIT = {80: 166_912, 90: 232_448}


def configurations():
    """Every kernel configuration the declared ops' launchers pick over their domains."""
    from .registry import ops

    seen = set()
    for op in ops():  # an op that launches another's kernel (CBAM's channel attention) lists it too
        for launch in op.configurations():
            if launch.key() not in seen:
                seen.add(launch.key())
                yield launch


def kernel_name(launch) -> str:
    """`_reduce_1x1_kernel` → `reduce_1x1`: the name the table prints."""
    return launch.kernel.strip("_").removesuffix("_kernel")


def compile_all(arch: int):
    """Compile every configuration for sm_<arch>; yields one result dict per configuration."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    for launch in configurations():
        signature, constexprs, options = dict(launch.signature), dict(launch.constexprs), dict(launch.options)
        row = {"kernel": kernel_name(launch),
               "dtype": next(v for v in signature.values() if v.startswith("*")).lstrip("*"),
               "blocks": "×".join(str(v) for k, v in constexprs.items() if k.startswith("BLOCK_")),
               "constexprs": {k: v for k, v in constexprs.items() if not k.startswith("BLOCK_")},
               "options": options}
        t0 = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(launch.fn, signature, constexprs), target=target, options=options)
        except Exception as err:  # noqa: BLE001 - every failure is reported, then the exit code says so
            row.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            yield row
            continue
        ptx = compiled.asm.get("ptx", "")
        shared = compiled.metadata.shared
        limit = SHARED_MEMORY_LIMIT[arch]
        row.update(
            ok=shared <= limit,
            shared=shared,
            wgmma=bool(re.search(r"\bwgmma\.", ptx)),
            mma=bool(re.search(r"\bmma\.sync\b", ptx)),
            seconds=time.perf_counter() - t0,
        )
        if shared > limit:
            row["error"] = f"shared memory {shared} B over the sm_{arch} limit of {limit} B"
        yield row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sm_90", choices=["sm_80", "sm_90"])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1 is set: unset it to compile kernels ahead of time", file=sys.stderr)
        return 2
    arch = int(args.target.removeprefix("sm_"))
    failures = 0
    print(f"{'kernel':<16} {'dtype':<5} {'blocks':<18} {'constexprs':<44} {'warps':>5} {'stages':>6} "
          f"{'shared B':>9} {'tensor cores':<12} {'time':>6} result")
    for row in compile_all(arch):
        tc = "wgmma" if row.get("wgmma") else "mma" if row.get("mma") else "-"
        consts = ", ".join(f"{k}={v}" for k, v in row["constexprs"].items())
        opts = row["options"]
        result = "ok" if row["ok"] else f"FAIL {row.get('error', '')}"
        failures += not row["ok"]
        print(f"{row['kernel']:<16} {row['dtype']:<5} {row['blocks']:<18} {consts:<44} "
              f"{opts.get('num_warps', 4):>5} {opts.get('num_stages', '-'):>6} {row.get('shared', '-'):>9} "
              f"{tc:<12} {row.get('seconds', 0):5.1f}s {result}")
    print(f"{args.target}: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
