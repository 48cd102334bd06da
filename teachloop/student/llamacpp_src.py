"""llama.cpp's own Python conversion code, taken from the sdist of the pinned llama-cpp-python (the runtime).

The student's GGUF files (base model and LoRA adapters) are written by llama.cpp's converters, not by code of ours,
so every architecture llama.cpp runs is exported the way llama.cpp expects it (LLaMA's q/k permutation, fused
projections, tied embeddings). The converters are not part of the llama-cpp-python wheel; its sdist ships them
under `vendor/llama.cpp/`. `ensure_converters()` fetches that sdist once (pip, the same version as the installed
runtime, so the writer matches the reader) and extracts only what conversion needs into `.cache/llama.cpp-src/`:

    python -m teachloop.student.llamacpp_src      # fetch + extract (what `make setup` runs); prints the folder

`run_converter()` runs a converter script in a subprocess with the vendored `gguf-py` first on its path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llama-cpp-python"
ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "llama.cpp-src"
# What conversion needs from vendor/llama.cpp: the two scripts, their shared `conversion` package, the gguf writer
# that matches this llama.cpp, and the vocab-only GGUFs (real tokenizers for tiny test students, no hub).
VOCABS = "models"  # the sdist's folder of vocab-only GGUFs (llama.cpp's layout, not one of our outputs)
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", f"{VOCABS}/ggml-vocab-",
          "LICENSE")
DONE = ".complete"


class ConverterError(RuntimeError):
    """llama.cpp's converter could not be fetched or failed on its input."""


def runtime_version() -> str:
    """The installed llama-cpp-python version: the converters must come from the same llama.cpp it runs."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise ConverterError(f"{PACKAGE} is not installed; run `make setup` (it is pinned in requirements.txt)") from e


def _extract(sdist: Path, dest: Path) -> None:
    """Copy the WANTED parts of the sdist's vendor/llama.cpp into `dest` (a fresh folder)."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 3)  # <pkg>-<version>/vendor/llama.cpp/<rest>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(WANTED):
                m.name = parts[3]
                members.append(m)
        if not any(m.name == "convert_lora_to_gguf.py" for m in members):
            raise ConverterError(f"{sdist} has no vendor/llama.cpp/convert_lora_to_gguf.py; is it a "
                                 f"{PACKAGE} sdist?")
        tar.extractall(dest, members=members, filter="data")


def _download_sdist(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={version}", "--no-deps", "--no-binary", ":all:",
           "--quiet", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise ConverterError(
            f"could not download the {PACKAGE}=={version} sdist, which ships llama.cpp's converters "
            f"({' '.join(cmd)} -> exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
            f"Fix: make the package index reachable, or download the sdist elsewhere and set "
            f"LLAMA_CPP_SDIST=/path/to/llama_cpp_python-{version}.tar.gz")
    return found[0]


def ensure_converters(cache: Path = CACHE) -> Path:
    """The folder with llama.cpp's converters for the installed runtime, fetched on first use (idempotent).

    `LLAMA_CPP_SDIST` may name an already downloaded sdist (offline machines).
    """
    version = runtime_version()
    target = cache / version
    if (target / DONE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        sdist = Path(os.environ["LLAMA_CPP_SDIST"]) if os.environ.get("LLAMA_CPP_SDIST") else \
            _download_sdist(version, tmp / "dl")
        if f"-{version}." not in sdist.name:
            raise ConverterError(f"LLAMA_CPP_SDIST={sdist} is not the {PACKAGE} {version} sdist the runtime needs")
        staged = tmp / "src"
        _extract(sdist, staged)
        (staged / DONE).write_text(f"{PACKAGE}=={version}\n")
        shutil.rmtree(target, ignore_errors=True)  # a half-extracted folder from an interrupted run
        staged.rename(target)  # same filesystem: readers see either nothing or the complete folder
    return target


def vocab_gguf(name: str) -> Path:
    """A vocab-only GGUF shipped with llama.cpp, e.g. vocab_gguf('qwen2') -> <VOCABS>/ggml-vocab-qwen2.gguf."""
    path = ensure_converters() / VOCABS / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("ggml-vocab-*.gguf"))
        raise ConverterError(f"no {path.name} in llama.cpp's models/ (have: {have})")
    return path


def run_converter(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run llama.cpp's `script` with `args`; its error output goes into the exception when it fails."""
    src = ensure_converters()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the scripts then put the vendored gguf-py ahead of PyPI's gguf
    done = subprocess.run([sys.executable, str(src / script), *args], capture_output=True, text=True, env=env,
                          cwd=src)
    if done.returncode != 0:
        raise ConverterError(f"llama.cpp's {script} failed (exit {done.returncode}) on {args}:\n"
                             f"{(done.stderr or done.stdout).strip()[-3000:]}")
    return done


if __name__ == "__main__":
    print(ensure_converters())
