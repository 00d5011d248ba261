"""`mathtune env`: versions and devices, for bug reports."""

from __future__ import annotations

import platform

from mathtune.cli import app


@app.command("env")
def env() -> None:
    """Print versions of mathtune and its libraries, and the devices torch sees."""
    import importlib.metadata as md

    import torch

    from mathtune.models import cpu_supports_bf16

    print(f"python       {platform.python_version()} ({platform.machine()})")
    for pkg in ("mathtune", "torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            print(f"{pkg:<12} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg:<12} not installed")
    print(f"cuda         {torch.cuda.is_available()} ({torch.cuda.device_count()} devices)")
    print(f"cpu bf16     {cpu_supports_bf16()}; threads {torch.get_num_threads()}")
