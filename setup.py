from setuptools import setup

setup(
    name="fastclip",
    version="0.1.0",
    description="Gradient clipping by global norm in two Triton kernel launches, a drop-in for "
                "torch.nn.utils.clip_grad_norm_",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the top-level kernels/ folder is installed as fastclip.kernels, never as a package `kernels`
    packages=["fastclip", "fastclip.kernels"],
    package_dir={"fastclip": "fastclip", "fastclip.kernels": "kernels"},
    # torch is not pinned here: an unpinned torch may pull a multi-GB CUDA build; install the
    # torch you train with first (see README).  triton is optional: without it fastclip falls
    # back to plain PyTorch.
    install_requires=[],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "hypothesis", "numpy"],
        "bench": ["pytest-benchmark", "matplotlib", "numpy"],
    },
)
