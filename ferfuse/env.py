"""Environment report for bug reports: `python -m ferfuse.env`."""
import platform

import torch



def _collect() -> dict:
    from ferfuse.engine.executors import onednn_available
    from ferfuse.kernels.compat import INTERPRET, TRITON_VERSION

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": TRITON_VERSION,
        "triton_interpret": INTERPRET,
        "onednn": onednn_available(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu_capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
    return info


def main():
    for key, value in _collect().items():
        print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
