"""What compose/docker-compose.yml must agree on with the code, as checks that
return a list of problems (empty = consistent).

No container engine runs where the tests run, so these checks are what keeps
the file honest: the names a model server serves against the policy of its
profile, listen/peer addresses against published ports and healthchecks,
environment variables against the settings the code reads (found by
introspection, not listed here), paths against mounts and the image, and
every command a container runs against the real `speckit` parser.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import pkgutil
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
PROFILES = ("cpu", "sglang", "vllm")
HELPER_PROFILE = "cli"
# Interpolation values for checking one profile: every required variable set.
BASE_ENV = {"SPECKIT_AUTH_TOKEN": "compose-check-token"}
# Variables a speckit container may carry that the code reads by other means:
# the tempfile module's folder (trials copy suite crates there).
STANDARD_ENV = frozenset({"TMPDIR"})
WILDCARD_HOSTS = ("0.0.0.0", "[::]", "::")

_VAR = re.compile(
    r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        got = env.get(name)
        unset = got is None or (got == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if unset else str(got)
        if op in ("?", ":?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(got)
        return got or ""

    return _VAR.sub(one, value)


def load_raw(compose_dir: Path = COMPOSE_DIR) -> dict[str, Any]:
    return yaml.safe_load((compose_dir / "docker-compose.yml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the code side


def speckit_parser() -> argparse.ArgumentParser:
    from speckit_reflex.cli.main import build_parser

    return build_parser()


def parse_speckit(argv: list[str]) -> argparse.Namespace:
    """The real CLI parser; a bad command line raises ValueError (not SystemExit)."""
    parser = speckit_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise ValueError(f"`speckit {' '.join(argv)}` is not a valid speckit command") from None


def _package_modules() -> Iterator[str]:
    import speckit_reflex

    for m in pkgutil.walk_packages(speckit_reflex.__path__, "speckit_reflex."):
        yield m.name


def settings_env_names() -> set[str]:
    """SPECKIT_* names of every pydantic-settings field in the package."""
    from pydantic_settings import BaseSettings

    for name in _package_modules():
        importlib.import_module(name)
    names: set[str] = set()
    todo = list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        prefix = cls.model_config.get("env_prefix", "")
        for fname, f in cls.model_fields.items():
            alias = f.validation_alias if isinstance(f.validation_alias, str) else f.alias
            names.add((alias or f"{prefix}{fname}").upper())
    return names


def literal_env_names() -> set[str]:
    """SPECKIT_* names the code reads directly (string constants, e.g.
    os.environ.get("SPECKIT_LLM_PORT")), from the package's source."""
    import speckit_reflex

    pattern = re.compile(r"^SPECKIT_[A-Z0-9_]+$")
    names: set[str] = set()
    for folder in speckit_reflex.__path__:
        for path in Path(folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and pattern.match(node.value)
                ):
                    names.add(node.value)
    return names


def known_env_names() -> set[str]:
    return settings_env_names() | literal_env_names()


def service_roles() -> tuple[str, ...]:
    from speckit_reflex.runtime.bootstrap import SERVICE_ORDER

    return tuple(SERVICE_ORDER)


# ---------------------------------------------------------------- the image


@dataclass
class Image:
    """What compose/Dockerfile builds: targets, entrypoint, env, copied paths."""

    targets: set[str] = field(default_factory=set)
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    copied: dict[str, str] = field(default_factory=dict)  # image path -> repo path

    @classmethod
    def parse(cls, dockerfile: Path) -> Image:
        img = cls()
        workdir = PurePosixPath("/")
        text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
        for line in text.splitlines():
            words = line.strip().split(None, 1)
            if not words or words[0].startswith("#"):
                continue
            op, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
            if op == "FROM" and " AS " in rest.upper():
                img.targets.add(rest.split()[-1])
            elif op == "WORKDIR":
                workdir = workdir / rest.strip()
            elif op == "ENTRYPOINT":
                img.entrypoint = yaml.safe_load(rest)
            elif op == "ENV":
                for pair in shlex.split(rest):
                    k, _, v = pair.partition("=")
                    img.env[k] = v
            elif op == "COPY" and not rest.startswith("--from"):
                *srcs, dest = shlex.split(rest)
                base = PurePosixPath(dest) if dest.startswith("/") else workdir / dest
                for src in srcs:
                    into = len(srcs) > 1 or dest.endswith("/")
                    img.copied[str(base / PurePosixPath(src).name if into else base)] = src
        return img

    def provides(self, path: str) -> str | None:
        """The repository path copied to `path` (or a parent of it), if any."""
        p = PurePosixPath(path)
        for dest, src in self.copied.items():
            d = PurePosixPath(dest)
            if p == d or d in p.parents:
                return str(Path(src) / p.relative_to(d))
        return None


# ---------------------------------------------------------------- the stack


@dataclass
class ModelServer:
    service: str
    kind: str  # a policy backend kind
    host: str
    port: int
    served: set[str]
    health_port: int | None


@dataclass
class Stack:
    """compose/docker-compose.yml interpolated for one profile."""

    doc: dict[str, Any]
    profile: str
    compose_dir: Path
    image: Image

    @classmethod
    def load(
        cls,
        profile: str,
        compose_dir: Path = COMPOSE_DIR,
        raw: dict[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Stack:
        values = {**BASE_ENV, "REFLEX_PROFILE": profile, **(env or {})}
        doc = interpolate(copy.deepcopy(raw if raw is not None else load_raw(compose_dir)), values)
        return cls(doc, profile, compose_dir, Image.parse(compose_dir / "Dockerfile"))

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.doc["services"]

    def active(self) -> dict[str, dict[str, Any]]:
        """Services `docker compose --profile <profile> up` starts, and the
        helpers `docker compose run` starts beside them (profile `cli`)."""
        return {
            n: s
            for n, s in self.services.items()
            if not s.get("profiles") or {self.profile, HELPER_PROFILE} & set(s["profiles"])
        }

    def is_speckit(self, svc: dict[str, Any]) -> bool:
        build = svc.get("build") or {}
        return build.get("dockerfile") == "compose/Dockerfile"

    def argv(self, svc: dict[str, Any]) -> list[str]:
        """The full command line a container runs (entrypoint + command)."""
        entry = svc.get("entrypoint")
        if entry is None and self.is_speckit(svc):
            entry = self.image.entrypoint
        command = svc.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        entry = shlex.split(entry) if isinstance(entry, str) else list(entry or [])
        return [*entry, *command]

    def env(self, svc: dict[str, Any]) -> dict[str, str]:
        raw = svc.get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) for item in raw)
        return {k: "" if v is None else str(v) for k, v in raw.items()}

    def mounts(self, svc: dict[str, Any]) -> list[tuple[str, str]]:
        """(source, target) of each volume; a named volume's source is its name."""
        out = []
        for v in svc.get("volumes") or []:
            if isinstance(v, dict):
                out.append((str(v.get("source", "")), str(v["target"])))
            else:
                parts = v.split(":")
                out.append((parts[0], parts[1]))
        return out

    def host_path(self, svc: dict[str, Any], path: str) -> tuple[str, str] | None:
        """(source, path under it) of the mount that holds container `path`."""
        p = PurePosixPath(path)
        for src, target in self.mounts(svc):
            t = PurePosixPath(target)
            if p == t or t in p.parents:
                return src, str(p.relative_to(t))
        return None

    def role_services(self) -> dict[str, str]:
        """speckit role ("router", ...) -> the service running `serve <role>`."""
        out: dict[str, str] = {}
        for name, svc in self.active().items():
            argv = self.argv(svc)
            if self.is_speckit(svc) and argv[1:2] == ["serve"]:
                out[argv[2]] = name
        return out

    def model_servers(self) -> list[ModelServer]:
        out = []
        for name, svc in self.active().items():
            server = _model_server(name, self.argv(svc), _health_port(svc))
            if server:
                out.append(server)
        return out

    def policy_of(self, svc: dict[str, Any]) -> Path | None:
        found = self.host_path(svc, self.env(svc).get("SPECKIT_POLICY", ""))
        if found is None:
            return None
        src, rel = found
        return (self.compose_dir / src / rel).resolve()


def _flag_values(argv: list[str]) -> dict[str, list[str]]:
    """--flag value pairs of a third-party command line; bare flags map to []."""
    out: dict[str, list[str]] = {}
    key = None
    for word in argv:
        if word.startswith("--"):
            key = word.split("=", 1)[0]
            out.setdefault(key, [])
            if "=" in word:
                out[key].append(word.split("=", 1)[1])
                key = None
        elif key is not None:
            out[key].append(word)
    return out


def _model_server(name: str, argv: list[str], health_port: int | None) -> ModelServer | None:
    if argv[:3] == ["speckit", "llm", "serve"]:
        args = parse_speckit(argv[1:])
        return ModelServer(name, "llamacpp", args.host, args.port, {args.alias}, health_port)
    joined = " ".join(argv)
    if "sglang.launch_server" in joined:
        kind, model_flag = "sglang", "--model-path"
    elif "vllm.entrypoints.openai.api_server" in joined or argv[:2] == ["vllm", "serve"]:
        kind, model_flag = "vllm", "--model"
    else:
        return None
    flags = _flag_values(argv)
    # Both runtimes serve the model under its path unless told otherwise.
    served = set(flags.get("--served-model-name") or flags.get(model_flag) or [])
    port = int((flags.get("--port") or ["30000" if kind == "sglang" else "8000"])[0])
    host = (flags.get("--host") or ["127.0.0.1"])[0]
    return ModelServer(name, kind, host, port, served, health_port)


def _health_port(svc: dict[str, Any]) -> int | None:
    test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/", test)
    return int(m.group(1)) if m else None


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------- checks

Check = Callable[[Stack], list[str]]


def check_profiles(st: Stack) -> list[str]:
    problems = []
    declared = {p for s in st.services.values() for p in s.get("profiles") or []}
    if st.profile not in declared:
        problems.append(f"profile {st.profile!r} is not declared by any service")
    if not st.model_servers():
        problems.append(f"profile {st.profile}: no model server")
    missing = [r for r in service_roles() if r not in st.role_services()]
    if missing:
        problems.append(f"profile {st.profile}: no service runs `serve {'/'.join(missing)}`")
    return problems


def check_served_models(st: Stack) -> list[str]:
    """Every policy backend reaches a server of this profile that serves its
    models under exactly the policy's names, and every server is used."""
    from speckit_reflex.policy import load_policy

    problems: list[str] = []
    servers = {s.service: s for s in st.model_servers()}
    used: set[str] = set()
    for name, svc in st.active().items():
        path = st.policy_of(svc) if st.is_speckit(svc) else None
        if path is None:
            continue
        backends = load_policy(str(path)).policy.routing.reflex.effective_backends()
        for b in backends:
            url = urlsplit(b.endpoint)
            server = servers.get(url.hostname or "")
            if server is None:
                problems.append(
                    f"{name}: policy backend {b.name} -> {url.hostname}, not a model server of "
                    f"profile {st.profile} ({', '.join(servers) or 'none'})"
                )
                continue
            used.add(server.service)
            if url.port != server.port:
                problems.append(
                    f"policy backend {b.name}: port {url.port}, {server.service} listens on {server.port}"
                )
            if b.kind != server.kind:
                problems.append(
                    f"policy backend {b.name}: kind {b.kind}, {server.service} is {server.kind}"
                )
            unserved = sorted(set(b.models) - server.served)
            if unserved:
                problems.append(
                    f"policy backend {b.name} expects {unserved}; {server.service} serves "
                    f"{sorted(server.served)}"
                )
    for s in servers.values():
        if s.service not in used:
            problems.append(
                f"model server {s.service} ({sorted(s.served)}) is in no policy backend"
            )
        if s.host not in WILDCARD_HOSTS:
            problems.append(
                f"model server {s.service} listens on {s.host}: unreachable from other containers"
            )
        if s.health_port != s.port:
            problems.append(
                f"model server {s.service}: healthcheck on port {s.health_port}, serves on {s.port}"
            )
    return problems


def check_addresses(st: Stack) -> list[str]:
    """Each role listens on a wildcard host at the port its peers dial, the
    port is published, and its healthcheck probes that role."""
    problems: list[str] = []
    roles = st.role_services()
    listen: dict[str, int] = {}
    for role, name in roles.items():
        svc = st.services[name]
        var = f"SPECKIT_{role.upper()}_ADDR"
        host, port = _hostport(st.env(svc).get(var, ":0"))
        listen[role] = port
        if host not in WILDCARD_HOSTS:
            problems.append(f"{name}: {var}={host}:{port} is not a wildcard listen address")
        published = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports") or []]
        if str(port) not in published:
            problems.append(f"{name}: listens on {port}, publishes {published}")
        test = (svc.get("healthcheck") or {}).get("test") or []
        if test[1:] != ["speckit-healthcheck", role]:
            problems.append(f"{name}: healthcheck {test} does not probe {role}")
    for name, svc in st.active().items():
        if not st.is_speckit(svc):
            continue
        for role, port in listen.items():
            var = f"SPECKIT_{role.upper()}_ADDR"
            value = st.env(svc).get(var)
            if value is None or roles[role] == name:
                continue
            host, p = _hostport(value)
            if (host, p) != (roles[role], port):
                problems.append(f"{name}: {var}={value}, but {roles[role]} listens on {port}")
    for name, svc in st.active().items():
        url = st.env(svc).get("SPECKIT_DATABASE_URL")
        if url:
            u = urlsplit(url)
            db = st.services.get(u.hostname or "")
            if db is None or u.port != 5432:
                problems.append(
                    f"{name}: database {u.hostname}:{u.port} is not the postgres service"
                )
            elif (st.env(db).get("POSTGRES_USER"), st.env(db).get("POSTGRES_DB")) != (
                u.username,
                u.path.strip("/"),
            ):
                problems.append(f"{name}: database user/name differ from the postgres service's")
    return problems


def check_environment(st: Stack, known: set[str] | None = None) -> list[str]:
    """Every variable a speckit container gets is one the code reads."""
    from speckit_reflex.policy import load_policy

    known = known_env_names() if known is None else known
    problems: list[str] = []
    for name, svc in st.active().items():
        if not st.is_speckit(svc):
            continue
        env = st.env(svc)
        key_vars: set[str] = set()
        path = st.policy_of(svc)
        if path is not None and path.is_file():
            reflex = load_policy(str(path)).policy.routing
            key_vars = {reflex.cloud.api_key_env} | {
                b.api_key_env for b in reflex.reflex.backends if b.api_key_env
            }
        for var in env:
            if var.startswith("SPECKIT_"):
                if var not in known:
                    problems.append(f"{name}: {var} is read by no setting in the code")
            elif var not in STANDARD_ENV and var not in key_vars:
                problems.append(
                    f"{name}: {var} is neither a speckit setting nor a key the policy names"
                )
        argv = st.argv(svc)
        if argv[1:3] == ["serve", "inference"]:
            for var in sorted(key_vars - set(env)):
                problems.append(f"{name}: the policy's key variable {var} is not passed in")
        if argv[1:2] == ["serve"] and not env.get("SPECKIT_AUTH_TOKEN"):
            problems.append(f"{name}: no SPECKIT_AUTH_TOKEN")
    for var, _ in st.image.env.items():
        if var.startswith("SPECKIT_") and var not in known:
            problems.append(f"Dockerfile: ENV {var} is read by no setting in the code")
    return problems


def _workspace_roots(env: Mapping[str, str]) -> list[str]:
    raw = env.get("SPECKIT_WORKSPACE_ROOTS", "")
    return [p for p in re.split(r"[:,]", raw) if p]


def check_paths(st: Stack) -> list[str]:
    """Paths the services use exist where the services look for them."""
    problems: list[str] = []
    declared = set((st.doc.get("volumes") or {}).keys())
    for name, svc in st.active().items():
        for src, _ in st.mounts(svc):
            if not src.startswith((".", "/")) and src not in declared:
                problems.append(f"{name}: named volume {src} is not declared")
            if src.startswith(".") and not (st.compose_dir / src).exists():
                problems.append(
                    f"{name}: mount source {src} does not exist next to the compose file"
                )
        if not st.is_speckit(svc):
            continue
        env = {**st.image.env, **st.env(svc)}
        argv = st.argv(svc)
        if "SPECKIT_POLICY" in st.env(svc):
            path = st.policy_of(svc)
            if path is None or not path.is_file():
                problems.append(
                    f"{name}: SPECKIT_POLICY {env['SPECKIT_POLICY']} is not a mounted file ({path})"
                )
        # Capsule keeps bakeoff reports there, PatchLoop its build cache.
        if (
            argv[1:3] in (["serve", "capsule"], ["serve", "patchloop"])
            and st.host_path(svc, env.get("SPECKIT_HOME", "")) is None
        ):
            problems.append(f"{name}: SPECKIT_HOME {env.get('SPECKIT_HOME')} is not on a volume")
        suites = env.get("SPECKIT_SUITES_DIR")
        if suites:
            src = st.image.provides(suites)
            if src is None or not (ROOT / src / "reflex_patchloop_v1" / "manifest.toml").is_file():
                problems.append(f"{name}: SPECKIT_SUITES_DIR {suites} is not copied into the image")
        workspaces = [t for s, t in st.mounts(svc) if s == t and s.startswith("/")]
        if argv[1:3] == ["serve", "patchloop"] or argv[1:2] == ["reflex"]:
            if not workspaces:
                problems.append(f"{name}: no workspace folder mounted at its host path")
        roots = _workspace_roots(st.env(svc))
        for root in roots:
            if st.host_path(svc, root) is None:
                problems.append(f"{name}: workspace root {root} is not a mount")
        # Unset, PatchLoop accepts only its working directory (/app): not the workspace.
        if (
            argv[1:3] == ["serve", "patchloop"]
            and "SPECKIT_WORKSPACE_ROOTS" in settings_env_names()
            and not any(
                PurePosixPath(r) == PurePosixPath(w) or PurePosixPath(r) in PurePosixPath(w).parents
                for w in workspaces
                for r in roots
            )
        ):
            problems.append(
                f"{name}: the mounted workspace {workspaces} is under no SPECKIT_WORKSPACE_ROOTS {roots}"
            )
        tmp = st.env(svc).get("TMPDIR")
        if tmp and not any(
            tmp == w or PurePosixPath(w) in PurePosixPath(tmp).parents for w in workspaces
        ):
            problems.append(f"{name}: TMPDIR {tmp} is not in the workspace PatchLoop sees")
    roles = st.role_services()
    if "patchloop" in roles and "cli" in st.services:
        pl, cli = st.services[roles["patchloop"]], st.services["cli"]
        roots = _workspace_roots(st.env(pl)) or [t for s, t in st.mounts(pl) if s == t]
        tmp = st.env(cli).get("TMPDIR", "")
        if not any(tmp == r or PurePosixPath(r) in PurePosixPath(tmp).parents for r in roots):
            problems.append(f"cli: TMPDIR {tmp} is outside PatchLoop's workspace roots {roots}")
        if st.mounts(cli) and not set(st.mounts(cli)) & set(st.mounts(pl)):
            problems.append("cli and patchloop share no workspace mount")
    return problems


def check_commands(st: Stack) -> list[str]:
    """Every speckit command parses with the real CLI; the services wait for
    the migration; each build target and the healthcheck binary exist."""
    problems: list[str] = []
    migrations = [
        n
        for n, s in st.active().items()
        if st.is_speckit(s) and st.argv(s)[1:3] == ["db", "upgrade"]
    ]
    if len(migrations) != 1:
        problems.append(f"expected one `speckit db upgrade` job, found {migrations}")
    for name, svc in st.active().items():
        build = svc.get("build") or {}
        if build and build.get("target") not in st.image.targets:
            problems.append(f"{name}: build target {build.get('target')} is not in the Dockerfile")
        if not st.is_speckit(svc):
            continue
        argv = st.argv(svc)
        if argv[:1] != ["speckit"]:
            problems.append(f"{name}: runs {argv[:1]}, not speckit")
            continue
        try:
            parse_speckit(argv[1:])
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
        test = (svc.get("healthcheck") or {}).get("test") or []
        if (
            "speckit-healthcheck" in test
            and "/usr/local/bin/speckit-healthcheck" not in st.image.copied
        ):
            problems.append(
                f"{name}: healthcheck runs speckit-healthcheck, which the image does not install"
            )
        if argv[1:2] == ["serve"] and migrations:
            dep = (svc.get("depends_on") or {}).get(migrations[0])
            if (
                not isinstance(dep, dict)
                or dep.get("condition") != "service_completed_successfully"
            ):
                problems.append(
                    f"{name}: does not wait for {migrations[0]} (service_completed_successfully)"
                )
    return problems


def check_metrics(st: Stack) -> list[str]:
    """Every service that serves /metrics (SPECKIT_METRICS_ADDR) is scraped by
    the metrics profile's Prometheus at that port, nothing else is, and
    Grafana mounts the dashboard and its provisioning that exist here."""
    problems: list[str] = []
    expected: set[str] = set()
    for name in st.role_services().values():
        value = st.env(st.services[name]).get("SPECKIT_METRICS_ADDR")
        if not value:
            problems.append(f"{name}: SPECKIT_METRICS_ADDR is not set (metrics are on in compose)")
            continue
        host, port = _hostport(value)
        if host not in WILDCARD_HOSTS:
            problems.append(
                f"{name}: SPECKIT_METRICS_ADDR={value} is not a wildcard listen address"
            )
        expected.add(f"{name}:{port}")
    prom = st.services.get("prometheus")
    if prom is None or "metrics" not in (prom.get("profiles") or []):
        return [*problems, "no prometheus service in the metrics profile"]
    config = next(
        (
            st.compose_dir / src
            for src, dst in st.mounts(prom)
            if dst == "/etc/prometheus/prometheus.yml"
        ),
        None,
    )
    if config is None or not config.is_file():
        return [*problems, f"prometheus: its config {config} is not a file here"]
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    scraped = {
        t
        for job in doc.get("scrape_configs") or []
        for sc in job.get("static_configs") or []
        for t in sc.get("targets") or []
    }
    for target in sorted(expected - scraped):
        problems.append(f"prometheus: {target} serves /metrics but is not scraped")
    for target in sorted(scraped - expected):
        problems.append(f"prometheus: scrapes {target}, which serves no /metrics")
    graf = st.services.get("grafana") or {}
    for src, _dst in st.mounts(graf):
        if src.startswith(".") and not (st.compose_dir / src).exists():
            problems.append(f"grafana: mounts {src}, which is not in compose/")
    return problems


CHECKS: dict[str, Check] = {
    "profiles": check_profiles,
    "served_models": check_served_models,
    "addresses": check_addresses,
    "environment": check_environment,
    "paths": check_paths,
    "commands": check_commands,
    "metrics": check_metrics,
}


def runbook_flags(runbook: Path, launcher: str, model: str) -> dict[str, list[str]]:
    """Flags of the runbook's command block that runs `launcher` on `model`."""
    text = runbook.read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in re.sub(r"\\\n", " ", block).split("\n"):
            words = shlex.split(command, comments=True)
            if launcher in words and model in words:
                return _flag_values(words)
    raise LookupError(f"no `{launcher}` command for {model} in {runbook}")
