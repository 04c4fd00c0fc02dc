from setuptools import setup

# What the tests need (pip install -e ".[test]"); add new test dependencies here.  numpy < 2.4:
# triton 3.6's interpreter (the GPU box's triton) fails on numpy 2.4 (a 1-element array no longer
# converts to a Python int); triton 3.9 works with either.  matplotlib: the plotting helpers and
# the examples are tested.  pytest-xdist: README's test command runs on every core (-n auto).
# The trainers (tests/test_trainers.py runs them under patch_torch and with the callbacks) are
# pinned to the versions the tests were written against; none of them pulls another torch when
# torch is installed first.  torchtitan is not here: its requirements (wandb, datasets,
# tensorboard, ...) are not needed to import its clipping function, so CI installs it with
# --no-deps (README, Install).
TRAINERS = ["transformers==5.24.0", "accelerate==1.15.0", "pytorch-lightning==2.6.6"]
TEST = ["pytest", "pytest-xdist", "hypothesis", "numpy<2.4", "matplotlib", *TRAINERS]
# What bench/run.py uses beyond the tests' needs (it installs what is missing itself).
BENCH = ["pytest-benchmark", "matplotlib", "numpy<2.4"]

setup(
    name="fastclip",
    version="0.1.0",
    description="Gradient clipping by global norm in two Triton kernel launches, a drop-in for "
                "torch.nn.utils.clip_grad_norm_",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the top-level kernels/ folder is installed as fastclip.kernels, never as a package `kernels`
    packages=["fastclip", "fastclip.integrations", "fastclip.kernels"],
    package_dir={"fastclip": "fastclip", "fastclip.kernels": "kernels"},
    # the optional native helper is compiled from source on the user's machine (python -m fastclip.native)
    package_data={"fastclip": ["csrc/*.cpp", "csrc/*.h"]},
    # torch is not a requirement here: an unpinned torch may pull a multi-GB CUDA build; install
    # the torch you train with first (see README).  triton is optional: without it fastclip falls
    # back to plain PyTorch.
    install_requires=[],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": TEST,
        "bench": BENCH,
        "dev": sorted(set(TEST + BENCH)),
    },
)
